"""CLI commands of the DICOM node: serve, echo, send, studies, jobs, outbox."""


def register(sub) -> None:  # filled in by the node commands
    pass
