#!/usr/bin/env bash
# Runs after every other multinode test (ctest FIXTURES_CLEANUP): nothing of the suite is left behind: no
# network namespace or link named lmn* (netns_fixture.sh's names), and no process running from the suite's
# folders (BUILD_DIR/multinode/) or inside a namespace of the fixture.
#
#   leftovers_test.sh BUILD_DIR
set -uo pipefail
build_dir="$1"
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "SKIP: the multinode fixture needs root and ip; nothing to check"
  exit 77
fi
fail=0
namespaces="$(ip netns list | grep '^lmn' || true)"
if [ -n "$namespaces" ]; then echo "FAIL: namespaces left: $namespaces"; fail=1; fi
links="$(ip -o link show | awk -F': ' '{print $2}' | grep '^lmn' || true)"
if [ -n "$links" ]; then echo "FAIL: links left: $links"; fail=1; fi
processes="$(pgrep -af "$build_dir/multinode/" | grep -v "leftovers_test.sh" || true)"
if [ -n "$processes" ]; then echo "FAIL: processes left: $processes"; fail=1; fi
((fail == 0)) && echo "PASS: no namespace, link or process of the multinode suite is left"
exit $fail
