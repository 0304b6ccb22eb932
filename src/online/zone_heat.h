// Where the users of a live mapping did I/O lately, per area of its sectors: the online gate
// (dm_online.cc) keeps a long hotzone off the areas users are busy in, since every user I/O that
// reaches a held zone waits for the whole step. A filesystem's journal, written at every fsync,
// is the typical busy area; the rest of a disk is mostly cold at any moment.
//
// The counts come from device-mapper's own I/O statistics on NAME (dm-stats, the kernel's
// Documentation/admin-guide/device-mapper/statistics.rst): one region with one counter set per
// area, over a window ahead of the engine that moves with it (a whole large disk in small areas
// would cost the kernel per-CPU memory for every area). A region carries the program id
// kStatsProgram, so that a run killed before deleting it leaves nothing a later run cannot find.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace ds::online {

inline constexpr char kStatsProgram[] = "diskseal-heat";

// One area's line of "@stats_print": its first sector and what its users did.
struct AreaCount {
  uint64_t start = 0;     // 512-byte sector in NAME
  uint64_t ios = 0;       // reads and writes completed
  uint64_t inflight = 0;  // I/Os in flight
};
// Parses the reply of "@stats_print": a line per area, "<start>+<length>" and 13 counters.
Result<std::vector<AreaCount>> ParseStatsPrint(std::string_view reply);
// The ids of the regions in the reply of "@stats_list" ("<id>: <start>+<length> <step>
// <program_id> <aux_data>" per region) whose program id is `program`.
std::vector<uint64_t> ParseStatsList(std::string_view reply, std::string_view program);

// Deletes every region of NAME with kStatsProgram's id (best effort: NAME may be gone).
void DeleteHeatRegions(const std::string& name);

// Threading: one thread (the engine's caller). Not copyable: it owns a kernel region, which
// DeleteHeatRegions (the online restore, always run after a run) deletes.
class ZoneHeat {
 public:
  using Clock = std::chrono::steady_clock;
  // NAME is `device_bytes` long; areas of `area_bytes` (a multiple of 512), in a window of
  // `window_areas` areas.
  ZoneHeat(std::string name, uint64_t device_bytes, uint64_t area_bytes, uint64_t window_areas);
  ZoneHeat(const ZoneHeat&) = delete;
  ZoneHeat& operator=(const ZoneHeat&) = delete;

  // Reads the counters of the window, first moving it so that it holds [offset, offset + len)
  // with room ahead in the direction of the run (towards lower offsets when `backward`). An error
  // means no statistics (the caller goes on without them).
  Status Sample(uint64_t offset, uint64_t len, bool backward, Clock::time_point now);
  // Of the bytes [offset, offset + max), how many at its start (at its end when `backward`)
  // lie in areas with no user I/O since `now - memory` as of the samples: where a zone can be
  // long. 0 when the first area is busy.
  uint64_t ColdRun(uint64_t offset, uint64_t max, bool backward, Clock::time_point now,
                   Clock::duration memory) const;
  // Records what Sample read (exposed for tests of the bookkeeping without a kernel).
  void Record(const std::vector<AreaCount>& areas, Clock::time_point now);
  uint64_t area_bytes() const { return area_; }

 private:
  Status MoveWindow(uint64_t offset, uint64_t len, bool backward);

  struct Area {
    uint64_t ios = 0;          // the current region's count at the last sample
    Clock::time_point busy{};  // the last sample that saw I/O here (epoch: never)
  };
  std::string name_;
  uint64_t size_, area_, window_;
  uint64_t w0_ = 0, w1_ = 0;  // the window, bytes (empty before the first sample)
  int64_t region_ = -1;
  std::map<uint64_t, Area> areas_;  // by area index (offset / area_)
};

}  // namespace ds::online
