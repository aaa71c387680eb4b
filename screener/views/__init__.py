"""What people read: the worklist (:mod:`.worklist`), status (:mod:`.status`), the statuses'
wording (:mod:`.wording`) and the reads a commissioning rests on (:mod:`.commissioning`)."""
