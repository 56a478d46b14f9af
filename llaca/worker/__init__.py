"""The learning worker: claim a buffer, run the group policy (train, guard, publish, outcomes), liveness and its command line."""
