"""The database: engines and their set-up (``engines``), the connection a thread keeps for a
job's own requests (``connections``), the faults a database can show (``faults``), and the
migrations it is at (``revisions``)."""
