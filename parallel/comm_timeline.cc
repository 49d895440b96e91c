#include "parallel/comm_timeline.h"

#include <algorithm>

#include "core/error.h"

namespace loom {

void CommTimeline::begin(Communicator& comm) {
  LOOM_CHECK(!open_, "CommTimeline::begin: the previous operation was not ended");
  open_ = &markers_.next();
  open_->record(comm.stream());
}

void CommTimeline::end(Communicator& comm, bool exposed) {
  LOOM_CHECK(open_, "CommTimeline::end without begin");
  WorkMarker& end = markers_.next();
  end.record(comm.stream());
  spans_.push_back({open_, &end, exposed});
  open_ = nullptr;
}

void CommTimeline::mark_compute_end() {
  WorkMarker& compute_end = markers_.next();
  compute_end.record(nullptr);
  windows_.push_back({&compute_end, nullptr});
}

void CommTimeline::mark_overlap_end(Communicator& comm) {
  LOOM_CHECK(!windows_.empty() && !windows_.back().overlap_end, "CommTimeline::mark_overlap_end without an open window");
  windows_.back().overlap_end = &markers_.next();
  windows_.back().overlap_end->record(comm.stream());
}

CommTimeline::Totals CommTimeline::collect() {
  Totals t;
  for (const Span& s : spans_) {
    const double ms = s.end->ms_since(*s.begin);
    t.communication_ms += ms;
    if (s.exposed) t.exposed_ms += ms;
    ++t.operations;
  }
  for (const Window& w : windows_)
    if (w.overlap_end) t.exposed_ms += std::max(0.0, w.overlap_end->ms_since(*w.compute_end));
  spans_.clear();
  windows_.clear();
  markers_.reset();
  open_ = nullptr;
  return t;
}

}  // namespace loom
