#!/bin/sh
# A stand-in job launcher for the controller's load test (load_test.sh): it starts no ranks (simulated workers
# register in their place) and only waits, so the job stays running.
exec sleep 600
