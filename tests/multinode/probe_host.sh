#!/usr/bin/env bash
# The controller's host probe in the multinode tests (loom-controller serve --host-probe): exits 0 when HOST
# (hostN of netns_fixture.sh, address 10.231.0.(N+1)) answers over the test network. Run in host0, it opens a
# TCP connection to a port where nothing listens: a host that is up refuses it at once; one whose link is down
# does not answer at all (2 s timeout).
#
#   probe_host.sh HOST
host="$1"
n="${host#host}"
if ! [[ "$n" =~ ^[0-9]+$ ]]; then
  echo "probe_host.sh: '$host' is not hostN"
  exit 2
fi
status=0
answer="$(timeout 2 bash -c "exec 3<>/dev/tcp/10.231.0.$((n + 1))/9" 2>&1)" || status=$?
if ((status == 0)) || [[ "$answer" == *"Connection refused"* ]]; then exit 0; fi
echo "$host: no answer (${answer:-timed out})"
exit 1
