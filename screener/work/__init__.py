"""The middle of the pipeline: the durable queue (:mod:`.queue`), the worker that leases jobs
(:mod:`.worker`), the scoring stage that decodes and scores a batch (:mod:`.scoring`), and
spool retention (:mod:`.retention`)."""
