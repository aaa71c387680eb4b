"""Process plumbing every stage uses: structured logs (:mod:`.logs`), metrics instruments
(:mod:`.metrics`), heartbeats (:mod:`.heartbeat`), children that die with their parent
(:mod:`.lifecycle`) and the wake-up signal between processes (:mod:`.wakeup`)."""
