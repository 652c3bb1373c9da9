"""What a job leaves on storage: the layout of an output, the storage it lives on, the sink
that writes one unit's shard and commits its marker, the ledger that reads the markers back,
and the leases and ownership checks that keep two jobs out of one output.

Depends only on ``spec``, ``records``, ``errors`` and ``images`` below it.
"""
