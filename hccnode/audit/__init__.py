"""The audit log's commands and checks above the store: verify, show, export, reverify an SR.

The hash-chained rows themselves are written and read by hccnode.store.audit.
"""
