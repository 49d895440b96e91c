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
  compute_end_ = &markers_.next();
  compute_end_->record(nullptr);
}

void CommTimeline::mark_overlap_end(Communicator& comm) {
  overlap_end_ = &markers_.next();
  overlap_end_->record(comm.stream());
}

CommTimeline::Totals CommTimeline::collect() {
  Totals t;
  for (const Span& s : spans_) {
    const double ms = s.end->ms_since(*s.begin);
    t.communication_ms += ms;
    if (s.exposed) t.exposed_ms += ms;
    ++t.operations;
  }
  if (compute_end_ && overlap_end_) t.exposed_ms += std::max(0.0, overlap_end_->ms_since(*compute_end_));
  spans_.clear();
  markers_.reset();
  open_ = compute_end_ = overlap_end_ = nullptr;
  return t;
}

}  // namespace loom
