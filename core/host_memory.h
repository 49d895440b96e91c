// The host's memory as the kernel reports it (Linux /proc), for memory reports and the trainer's fit check.
// Thread-safety: pure reads of /proc; any thread.
#pragma once
#include <cstdint>

namespace loom {

// Resident memory of this process (/proc/self/statm), in bytes; 0 when it cannot be read.
int64_t host_rss_bytes();

// Memory the kernel could give a new allocation without swapping (/proc/meminfo MemAvailable), in bytes;
// -1 when it cannot be read.
int64_t host_available_bytes();

}  // namespace loom
