#include "online/zone_heat.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "dm/dm.h"

namespace ds::online {

namespace {
constexpr uint64_t kSector = 512;
}  // namespace

Result<std::vector<AreaCount>> ParseStatsPrint(std::string_view reply) {
  std::vector<AreaCount> out;
  std::istringstream in{std::string(reply)};
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    unsigned long long start = 0, len = 0, c[13] = {};
    // The 13 counters: reads, reads merged, sectors read, ms reading, writes, writes merged,
    // sectors written, ms writing, in flight, ms doing I/O, weighted ms, ms reading and writing.
    int n = std::sscanf(line.c_str(), "%llu+%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
                        &start, &len, &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7], &c[8], &c[9], &c[10],
                        &c[11], &c[12]);
    if (n != 15 || len == 0) return Corrupt("device-mapper statistics: unexpected line '" + line + "'");
    out.push_back(AreaCount{start, c[0] + c[4], c[8]});
  }
  return out;
}

std::vector<uint64_t> ParseStatsList(std::string_view reply, std::string_view program) {
  std::vector<uint64_t> ids;
  std::istringstream in{std::string(reply)};
  for (std::string line; std::getline(in, line);) {
    std::istringstream l(line);
    std::string id, range, step, prog;
    if (!(l >> id >> range >> step >> prog) || id.size() < 2 || id.back() != ':') continue;
    if (prog != program) continue;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(id.c_str(), &end, 10);
    if (end == id.c_str() + id.size() - 1) ids.push_back(v);
  }
  return ids;
}

void DeleteHeatRegions(const std::string& name) {
  auto list = dm::Message(name, std::string("@stats_list ") + kStatsProgram);
  if (!list.ok()) return;
  for (uint64_t id : ParseStatsList(*list, kStatsProgram)) (void)dm::Message(name, "@stats_delete " + std::to_string(id));
}

ZoneHeat::ZoneHeat(std::string name, uint64_t device_bytes, uint64_t area_bytes, uint64_t window_areas)
    : name_(std::move(name)), size_(device_bytes), area_(std::max<uint64_t>(kSector, area_bytes / kSector * kSector)),
      window_(std::max<uint64_t>(1, window_areas) * area_) {}

Status ZoneHeat::MoveWindow(uint64_t offset, uint64_t len, bool backward) {
  const uint64_t end = std::min(size_, offset + len);
  uint64_t w0, w1;
  if (!backward) {
    w0 = offset / area_ * area_;
    w1 = std::min(size_, std::max(w0 + window_, (end + area_ - 1) / area_ * area_));
  } else {
    w1 = std::min(size_, (end + area_ - 1) / area_ * area_);
    w0 = std::min(offset, w1 > window_ ? w1 - window_ : 0) / area_ * area_;
  }
  if (region_ >= 0) {
    (void)dm::Message(name_, "@stats_delete " + std::to_string(region_));
    region_ = -1;
  }
  w0_ = w1_ = 0;
  DS_ASSIGN_OR_RETURN(std::string id, dm::Message(name_, "@stats_create " + std::to_string(w0 / kSector) + "+" +
                                                             std::to_string((w1 - w0) / kSector) + " " +
                                                             std::to_string(area_ / kSector) + " " + kStatsProgram));
  char* e = nullptr;
  const long long v = std::strtoll(id.c_str(), &e, 10);
  if (e == id.c_str() || v < 0) return Corrupt(name_ + ": device-mapper statistics: unexpected region id '" + id + "'");
  region_ = v;
  w0_ = w0;
  w1_ = w1;
  // The new region counts from zero; what earlier samples saw busy inside it stays busy.
  for (auto it = areas_.begin(); it != areas_.end();) {
    if (it->first < w0 / area_ || it->first * area_ >= w1) {
      it = areas_.erase(it);
    } else {
      it->second.ios = 0;
      ++it;
    }
  }
  return Status::Ok();
}

Status ZoneHeat::Sample(uint64_t offset, uint64_t len, bool backward, Clock::time_point now) {
  const uint64_t end = std::min(size_, offset + len);
  const bool inside = region_ >= 0 && offset >= w0_ && end <= w1_;
  // Room ahead: the run reaches the window's far half only once it has been watched for a while.
  const bool ahead = backward ? (w0_ == 0 || offset >= w0_ + window_ / 2) : (w1_ == size_ || end <= w1_ - window_ / 2);
  if (!inside || !ahead) DS_RETURN_IF_ERROR(MoveWindow(offset, len, backward));
  DS_ASSIGN_OR_RETURN(std::string reply, dm::Message(name_, "@stats_print " + std::to_string(region_)));
  DS_ASSIGN_OR_RETURN(auto areas, ParseStatsPrint(reply));
  Record(areas, now);
  return Status::Ok();
}

void ZoneHeat::Record(const std::vector<AreaCount>& areas, Clock::time_point now) {
  for (const auto& a : areas) {
    Area& st = areas_[a.start * kSector / area_];
    if (a.ios != st.ios || a.inflight > 0) st.busy = now;
    st.ios = a.ios;
  }
}

uint64_t ZoneHeat::ColdRun(uint64_t offset, uint64_t max, bool backward, Clock::time_point now,
                           Clock::duration memory) const {
  const auto busy = [&](uint64_t idx) {
    auto it = areas_.find(idx);
    return it != areas_.end() && it->second.busy != Clock::time_point{} && now - it->second.busy < memory;
  };
  const uint64_t end = offset + max;
  if (!backward) {
    uint64_t pos = offset;
    while (pos < end && !busy(pos / area_)) pos = std::min(end, (pos / area_ + 1) * area_);
    return pos - offset;
  }
  uint64_t pos = end;
  while (pos > offset && !busy((pos - 1) / area_)) pos = std::max(offset, (pos - 1) / area_ * area_);
  return end - pos;
}

}  // namespace ds::online
