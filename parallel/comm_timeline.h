// CommTimeline: how long a training step spent communicating, and how much of that the computation waited for
// (the "exposed" communication of MFU accounting).
//
// Each operation is bracketed by two markers (Backend::make_marker) recorded on the communicator's stream:
// CUDA events, so timing never synchronises the step; on the CPU the host clock around the call.
// - An exposed operation is one the computation waits for right after it (tensor- and sequence-parallel
//   region boundaries): all of its time counts as exposed.
// - An overlapped operation (a gradient bucket reduced while the backward runs, a tensor-parallel reduction
//   running beside a GEMM) counts as exposed only for the part after the computation ran out of work: each
//   overlap window runs from mark_compute_end() (the last kernel that overlaps is queued) to mark_overlap_end()
//   (the overlapped operations are done); a window whose communication finished first exposes nothing. On the
//   CPU, MPI's non-blocking reductions progress inside MPI, so their own durations are not seen; their exposed
//   part still is (the wait at the end of the backward).
//
// Contract: driven by the training thread, like the backend it was made with (which must outlive it). Markers
// are reused from step to step; collect() must be called once the step's work has been queued (it blocks until
// the markers have completed) and starts the next step's account.
#pragma once
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace loom {

// Markers made by one backend, reused from step to step: next() hands out the next one (making it on first
// use), reset() starts over. Markers stay valid until the pool is destroyed.
class MarkerPool {
 public:
  explicit MarkerPool(const Backend& backend) : backend_(backend) {}
  WorkMarker& next() {
    if (used_ == markers_.size()) markers_.push_back(backend_.make_marker());
    return *markers_[used_++];
  }
  void reset() { used_ = 0; }

 private:
  const Backend& backend_;
  std::vector<std::unique_ptr<WorkMarker>> markers_;
  size_t used_ = 0;
};

class CommTimeline {
 public:
  explicit CommTimeline(const Backend& backend) : markers_(backend) {}

  // Call right before and right after enqueuing one operation on `comm` (after its wait_for_stream()).
  void begin(Communicator& comm);
  void end(Communicator& comm, bool exposed);
  // Opens an overlap window: the computation has queued its last kernel that runs beside the overlapped
  // operations.
  void mark_compute_end();
  // Closes the window opened last: the overlapped operations queued so far on `comm` are done there (recorded
  // on its stream after them; on the CPU after waiting for them).
  void mark_overlap_end(Communicator& comm);

  struct Totals {
    double communication_ms = 0;  // Σ operation durations (overlapped ones included where measurable)
    double exposed_ms = 0;        // time the computation waited for communication
    int operations = 0;
  };
  // The step's totals; resets the account.
  Totals collect();

 private:
  MarkerPool markers_;
  struct Span {
    WorkMarker *begin, *end;
    bool exposed;
  };
  std::vector<Span> spans_;
  WorkMarker* open_ = nullptr;  // a begin() without its end()
  struct Window {
    WorkMarker *compute_end, *overlap_end;  // overlap_end null until closed
  };
  std::vector<Window> windows_;
};

}  // namespace loom
