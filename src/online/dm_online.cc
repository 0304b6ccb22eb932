#include "online/dm_online.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>

#include "dm/dm.h"
#include "dm/volume_table.h"
#include "engine/reencrypt_state.h"
#include "online/adopt.h"
#include "online/memory_lock.h"
#include "online/zone_heat.h"
#include "volume/signature.h"

namespace ds::online {

namespace {

constexpr uint64_t kSector = 512;
constexpr char kHotzoneUuidPrefix[] = "DISKSEAL-HOTZONE-";
constexpr char kQueueUuidPrefix[] = "DISKSEAL-HZQUEUE-";
// The crypt helpers follow cryptsetup's UUIDs for the devices under its own mappings
// (CRYPT-SUBDEV-<LUKS UUID without dashes>-<name>, as its reencryption's): each shows the volume's
// plaintext, and LVM skips devices with this prefix (a physical volume on NAME would otherwise
// be found twice more); `cryptsetup close NAME` removes them with NAME.
constexpr char kCryptUuidPrefix[] = "CRYPT-SUBDEV-";

std::string HzPath(const std::string& name) { return "/dev/mapper/" + HotzoneName(name); }

// `s` without its first `d` sectors: the same mapping further on.
dm::Segment Skip(dm::Segment s, uint64_t d) {
  s.device_sector += d;
  if (s.type == dm::Segment::Type::kCrypt) s.iv_offset += d;
  s.sectors -= d;
  return s;
}

// `segs` (plaintext order) with sectors [from, from + n) replaced by `hot`.
std::vector<dm::Segment> Overlay(const std::vector<dm::Segment>& segs, uint64_t from, uint64_t n,
                                 const dm::Segment& hot) {
  std::vector<dm::Segment> out;
  uint64_t at = 0;
  bool placed = false;
  for (const auto& s : segs) {
    const uint64_t s0 = at, s1 = at + s.sectors;
    at = s1;
    if (s0 < from) {
      dm::Segment a = s;
      a.sectors = std::min(s1, from) - s0;
      out.push_back(a);
    }
    if (!placed && s1 > from) {
      out.push_back(hot);
      placed = true;
    }
    if (s1 > from + n) {
      const uint64_t b0 = std::max(s0, from + n);
      dm::Segment b = Skip(s, b0 - s0);
      out.push_back(b);
    }
  }
  return out;
}

// NAME's table for the header `v` holds, with plaintext bytes [off, off+len) in the new layout
// over the helper device when len > 0.
Result<dm::Activation> TableFor(luks2::Volume& v, const std::string& name, const std::string& device,
                                const std::map<int, const SecureBuffer*>& keys, uint64_t off = 0,
                                uint64_t len = 0) {
  dm::Activation a;
  a.name = name;
  a.luks_uuid = v.metadata().uuid;
  a.device = device;
  DS_ASSIGN_OR_RETURN(a.segments, dm::VolumeSegments(v, keys));
  if (len == 0) return a;
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
  if (!st) return Internal(name + ": no operation in progress to route a hotzone for");
  dm::Segment hot;
  hot.sectors = len / kSector;
  hot.device = HzPath(name);
  hot.device_sector = st->NewAt(off) / kSector;
  if (st->new_seg.type == "crypt") {
    auto k = keys.find(st->digest_new);
    if (k == keys.end()) return PermissionDenied(name + ": the new volume key is not unlocked");
    hot.type = dm::Segment::Type::kCrypt;
    hot.cipher = st->new_seg.cipher;
    hot.iv_offset = st->new_seg.iv_tweak + off / kSector;
    hot.sector_size = st->new_seg.sector_size;
    hot.key = k->second->span();
  } else {
    hot.type = dm::Segment::Type::kLinear;
  }
  a.segments = Overlay(a.segments, off / kSector, len / kSector, hot);
  return a;
}

Result<luks2::Volume> LoadFresh(const VolumeRef& ref) {
  return luks2::Volume::Load(*ref.env, ref.device, ref.header, true);
}

// Switches NAME to the table `a` (loaded, then suspend/resume: only the I/O in flight is waited for).
Status Switch(const dm::Activation& a) {
  DS_RETURN_IF_ERROR(dm::Reload(a));
  DS_RETURN_IF_ERROR(dm::Suspend(a.name));
  return dm::Resume(a.name);
}

// Finishes the zone [off, off+len) whose users' writes are queued, new, in the suspended helper.
Status FinishZone(const VolumeRef& ref, const std::map<int, const SecureBuffer*>& keys,
                  uint64_t hotzone_bytes, uint64_t off, uint64_t len) {
  DS_ASSIGN_OR_RETURN(luks2::Volume v, LoadFresh(ref));
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
  if (!st) return Status::Ok();  // finished: every zone is new
  const uint64_t until = st->backward ? st->data_size - off : off + len;
  if (st->done >= until) return Status::Ok();
  engine::EngineOptions eo;
  eo.hotzone_bytes = hotzone_bytes;
  eo.in_use = true;
  eo.users_bypass_cache = true;  // they write through NAME
  eo.until_done = until;
  return engine::RunOperation(v, keys, eo);
}

// Removes a helper. Just after someone removed NAME the kernel may still hold the helper
// open for a moment (NAME's tables release it asynchronously): busy is retried, bounded (10 s:
// a loaded machine takes longer, and a helper left behind blocks the next open).
Status RemoveHelper(const std::string& hz_name) {
  Status s = dm::Remove(hz_name);
  for (int i = 0; i < 500 && s.code() == Code::kBusy; ++i) {
    ::usleep(20 * 1000);
    s = dm::Remove(hz_name);
  }
  return s;
}

// Removes the helpers among `names` that exist, in that order.
Status RemoveHelpersInOrder(std::initializer_list<std::string> names) {
  for (const std::string& n : names) {
    DS_ASSIGN_OR_RETURN(auto m, dm::Find(n));
    if (m) DS_RETURN_IF_ERROR(RemoveHelper(n));
  }
  return Status::Ok();
}

// Removes NAME's helpers that exist, each before the one it holds open (NAME-dshzn holds
// NAME-dshz, which holds the queue). A removal waits 30-50 ms in the kernel in the QEMU guest
// (mostly for grace periods, not CPU), and the run's end waits for them all: the layouts over the
// data device, which hold none of the others, are removed by a child process meanwhile (not a
// thread: libdevmapper's error reporting here is process-global). Precondition: NAME maps none of
// them any more (or is gone).
Status RemoveHelpers(const std::string& name) {
  std::cout.flush();
  std::cerr.flush();
  const pid_t side = ::fork();
  if (side == 0) {
    Status s = RemoveHelpersInOrder({DoneName(name), OldName(name)});
    if (!s.ok()) std::fprintf(stderr, "diskseal: %s\n", s.message().c_str());
    ::_exit(s.ok() ? 0 : 1);
  }
  Status chain = RemoveHelpersInOrder({HotNewName(name), HotzoneName(name), QueueName(name)});
  if (side < 0) {
    DS_RETURN_IF_ERROR(chain);
    return RemoveHelpersInOrder({DoneName(name), OldName(name)});
  }
  int status = 0;
  pid_t r;
  while ((r = ::waitpid(side, &status, 0)) < 0 && errno == EINTR) {
  }
  DS_RETURN_IF_ERROR(chain);
  if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return IOError(name + ": removing " + DoneName(name) + " or " + OldName(name) + " failed (see above)");
  return Status::Ok();
}

// Removes the helpers of NAME once NAME itself is gone (closed by someone else): nothing uses them
// any more, so nothing can be queued in them; a suspended one is resumed first.
Status RemoveOrphans(const std::string& name) {
  for (const std::string& n : {HotzoneName(name), QueueName(name)}) {
    DS_ASSIGN_OR_RETURN(auto m, dm::Find(n));
    if (m && m->suspended) DS_RETURN_IF_ERROR(dm::Resume(n, true));
  }
  return RemoveHelpers(name);
}

// See the file comment of dm_online.h: brings NAME back to the plain table of the header on disk
// and removes the helpers, whatever state a run left them in.
Status Restore(const VolumeRef& ref, const std::string& name, const std::map<int, const SecureBuffer*>& keys,
               uint64_t hotzone_bytes) {
  DS_ASSIGN_OR_RETURN(auto hz, dm::Find(HotzoneName(name)));
  DS_ASSIGN_OR_RETURN(auto queue, dm::Find(QueueName(name)));
  DS_ASSIGN_OR_RETURN(auto top, dm::Find(name));
  // The device whose suspension holds a zone: the queue, or the helper itself without dm-delay.
  const auto& held = queue ? queue : hz;
  const std::string held_name = queue ? QueueName(name) : HotzoneName(name);
  if (!top) {
    // Closed by someone else (it was not mounted): nothing uses the helpers any more; the header
    // is consistent (a zone left flagged is recovered by the next open or resume).
    DS_RETURN_IF_ERROR(RemoveOrphans(name));
    return NotFound(name + ": /dev/mapper/" + name + " was closed during the operation; nothing is lost: open it "
                    "again and run `diskseal resume` to carry on");
  }
  DeleteHeatRegions(name);  // the run's I/O statistics on NAME (zone_heat.h)
  if (held && held->suspended) {
    DS_ASSIGN_OR_RETURN(auto hot_new, dm::Find(HotNewName(name)));
    if (!top->suspended && hz) {
      // Which range of NAME goes over the helper (or over the new layout above it): the zone
      // that was held.
      DS_ASSIGN_OR_RETURN(auto targets, dm::LiveTargets(name));
      for (const auto& t : targets) {
        if (t.device != hz->dev && !(hot_new && t.device == hot_new->dev)) continue;
        Status fin = FinishZone(ref, keys, hotzone_bytes, t.start * kSector, t.sectors * kSector);
        if (!fin.ok()) {
          // The queued writes are in the new layout over a zone that is not: they must never
          // land. Fail them (and everything else there) rather than let the users wait forever.
          dm::Activation err;
          err.name = held_name;
          err.device = ref.device;
          dm::Segment e;
          e.type = dm::Segment::Type::kError;
          DS_ASSIGN_OR_RETURN(auto v, LoadFresh(ref));
          e.sectors = v.data_device().Size() / kSector;
          err.segments = {e};
          (void)dm::Reload(err);
          (void)dm::Resume(held_name, true);
          return fin.WithContext(name + ": the hotzone at byte " + std::to_string(t.start * kSector) +
                                 " could not be finished; its I/O now fails until `diskseal resume` finishes it");
        }
      }
    }
    DS_RETURN_IF_ERROR(dm::Resume(held_name, true));
  }
  {
    DS_ASSIGN_OR_RETURN(luks2::Volume v, LoadFresh(ref));
    DS_ASSIGN_OR_RETURN(dm::Activation a, TableFor(v, name, ref.device, keys));
    a.read_only = top->read_only;
    DS_RETURN_IF_ERROR(Switch(a));
  }
  return RemoveHelpers(name);
}

// The engine's gate over the dm stack; the guardian behind it.
class DmGate final : public engine::ZoneGate {
 public:
  DmGate(luks2::Volume& v, const VolumeRef& ref, std::string name, const std::map<int, const SecureBuffer*>& keys,
         bool read_only)
      : v_(v), ref_(ref), name_(std::move(name)), keys_(keys), read_only_(read_only) {}
  ~DmGate() override { (void)Finish(); }

  // Creates the helper devices and forks the guardian. Precondition: single-threaded caller.
  // `lock`: how the run locked its memory; the guardian locks its own the same way (locks are
  // not inherited across fork), since it may finish a held zone after the run is killed.
  Status Start(uint64_t hotzone_bytes, const LockDecision& lock) {
    const auto helper = [&](const std::string& n, const char* kind, dm::Segment seg) {
      dm::Activation a;
      a.name = n;
      a.device = ref_.device;
      a.dm_uuid = (std::string(kind) + v_.metadata().uuid + "-" + name_).substr(0, 128);
      a.private_device = true;
      a.segments = {seg};
      return a;
    };
    dm::Segment lin;
    lin.type = dm::Segment::Type::kLinear;
    lin.sectors = v_.data_device().Size() / kSector;
    dm::Segment split = lin;
    split.type = dm::Segment::Type::kSplitFlush;
    split.device = "/dev/mapper/" + QueueName(name_);
    DS_RETURN_IF_ERROR(dm::Create(helper(QueueName(name_), kQueueUuidPrefix, lin)));
    held_ = QueueName(name_);
    Status made = dm::Create(helper(HotzoneName(name_), kHotzoneUuidPrefix, split));
    if (!made.ok()) {
      // No dm-delay in this kernel (or no module for it): the helper is a linear device held
      // itself, as before the split. Correct, but every flush on NAME waits for a held zone.
      DS_RETURN_IF_ERROR(RemoveHelper(QueueName(name_)));
      DS_RETURN_IF_ERROR(dm::Create(helper(HotzoneName(name_), kHotzoneUuidPrefix, lin)));
      held_ = HotzoneName(name_);
      std::cerr << "diskseal: " << name_ << ": no dm-delay target (" << made.message()
                << "); a flush on /dev/mapper/" << name_ << " waits while a hotzone is rewritten\n";
    }
    MakeCryptHelpers();
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return PosixError("pipe", errno);
    std::cout.flush();
    std::cerr.flush();
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int e = errno;
      ::close(fds[0]);
      ::close(fds[1]);
      return PosixError("fork (the online guardian)", e);
    }
    if (pid == 0) {
      // The guardian: waits for the run to end (its write end closes, also when it is killed),
      // then restores the mapping. Ignores the signals a terminal sends the whole group.
      ::close(fds[1]);
      ::signal(SIGINT, SIG_IGN);
      ::signal(SIGTERM, SIG_IGN);
      ::signal(SIGHUP, SIG_IGN);
      // Single-threaded here (forked before the engine's threads): reading maps may allocate.
      (void)LockMemory(*ref_.env, lock);
      char c;
      while (::read(fds[0], &c, 1) != 0) {
        if (errno != EINTR && errno != EAGAIN) break;
      }
      Status s = Restore(ref_, name_, keys_, hotzone_bytes);
      // A mapping closed under the run is reported by the run itself while it lives (RunOnline).
      const bool run_reports = s.code() == Code::kNotFound && ::getppid() == parent;
      if (!s.ok() && !run_reports) std::fprintf(stderr, "diskseal: %s\n", s.message().c_str());
      ::_exit(s.ok() ? 0 : 1);
    }
    ::close(fds[0]);
    pipe_ = fds[1];
    guardian_ = pid;
    return Status::Ok();
  }

  // The hold of a zone is what a user touching it waits for. Idle: `max` (the rate is best with
  // big zones). Busy (users did I/O on NAME within the last kBusyMemoryMs): the zone ends before
  // the first area where users did I/O lately (zone_heat.h); one that starts in such an area is
  // kHotZone long, so that what waits there waits little; elsewhere it holds about kColdHold at
  // the rate of the last long step (at least kMinBusyZone). Without statistics: about kBusyHold.
  uint64_t ZoneLength(uint64_t offset, uint64_t max, bool backward) override {
    const uint64_t ios = UserIos();
    const auto now = std::chrono::steady_clock::now();
    // Users blocked on a short zone do little I/O during it: busy stays busy for kBusyMemory.
    // A few I/Os (a filesystem's lazy inode table init, a journal commit) are not a workload.
    if (ios >= last_ios_ + kBusyIos) busy_until_ = now + std::chrono::milliseconds(kBusyMemoryMs);
    last_ios_ = ios;
    if (now >= busy_until_ || max == 0) return max;
    uint64_t want = std::min(max, kFirstBusyZone);
    if (rate_ > 0) want = std::min<uint64_t>(max, std::max<uint64_t>(kMinBusyZone, uint64_t(rate_ * kBusyHold)));
    if (heat_) {
      if (Status s = heat_->Sample(offset, max, backward, now); !s.ok()) {
        // No statistics (an old kernel, or NAME gone): zones sized by time alone.
        heat_.reset();
        return want;
      }
      const uint64_t cold = heat_->ColdRun(offset, max, backward, now, std::chrono::milliseconds(kBusyMemoryMs));
      if (cold == 0) return std::min(max, kHotZone);
      // Where nobody worked lately a zone may hold longer: few users reach it.
      uint64_t cold_want = std::min(max, kFirstBusyZone);
      if (rate_ > 0) cold_want = std::min<uint64_t>(max, std::max<uint64_t>(kMinBusyZone, uint64_t(rate_ * kColdHold)));
      want = std::min(cold_want, cold);
    }
    return want;
  }

  Status Hold(uint64_t off, uint64_t len, uint64_t) override {
    DS_ASSIGN_OR_RETURN(dm::Activation a, TableFor(v_, name_, ref_.device, keys_, off, len));
    a.segments = RouteOverCryptHelpers(a.segments, crypt_helpers_);
    a.read_only = read_only_;
    // Suspending NAME waits for its I/O in flight, and all I/O arriving meanwhile queues behind
    // it: let a burst in flight finish first (bounded: a steady stream must not stop the run).
    BackOff();
    held_at_ = std::chrono::steady_clock::now();
    held_len_ = len;
    DS_RETURN_IF_ERROR(dm::Reload(a));
    DS_RETURN_IF_ERROR(dm::Suspend(name_));
    // Top to bottom: the queue (or the lone helper) is suspended while NAME is, so no I/O can be
    // in it half-way; NAME's I/O drained through it when NAME was suspended.
    Status s = dm::Suspend(held_);
    // udev's rules for NAME's new table read NAME, hence the suspended queue: their end is
    // waited for once the queue is resumed (Release), never while it is held.
    WaitPendingUdev();
    Status r = s.ok() ? dm::ResumeNoWait(name_, udev_cookie_) : dm::Resume(name_);
    DS_RETURN_IF_ERROR(s);
    return r;
  }

  Status Release(const luks2::Metadata&) override {
    Status s = dm::Resume(held_, true);
    const double held = std::chrono::duration<double>(std::chrono::steady_clock::now() - held_at_).count();
    // The rate of a short zone is mostly the step's fixed cost: only long ones estimate it.
    if (held > 0 && held_len_ >= kMinBusyZone) rate_ = double(held_len_) / held;
    if (s.ok()) WaitPendingUdev();
    return s;
  }

  // Watches NAME's block statistics for kObserveMs before the first zone, so that a first zone
  // under a running workload is short too and avoids where it works: BeginObserve starts the
  // window, EndObserve waits for what is left of it (the helpers are made meanwhile). `first`:
  // the first zone's offset; `max` its longest length. A run that ends between the two deletes
  // the statistics region (DeleteHeatRegions; the guardian's restore does once it runs).
  void BeginObserve(dev_t top, uint64_t first, uint64_t max, bool backward) {
    observe_from_ = std::chrono::steady_clock::now();
    first_ = first;
    max_ = max;
    backward_ = backward;
    sysfs_ = "/sys/dev/block/" + std::to_string(major(top)) + ":" + std::to_string(minor(top));
    last_ios_ = UserIos();
    // Areas of kHeatArea (larger on a disk whose hotzone limit is large), in a window of at
    // least four zones: bounded kernel memory whatever the disk's size.
    // NAME's own size (sysfs, in sectors): smaller than the data device's when the header is
    // at its start, and a statistics region must lie inside NAME.
    const uint64_t area = std::max<uint64_t>(kHeatArea, max / 16);
    char size[32];
    unsigned long long sectors = 0;
    if (ReadSysfs("size", size, sizeof size) && std::sscanf(size, "%llu", &sectors) == 1 && sectors > 0)
      heat_.emplace(name_, sectors * kSector, area, 64);
    DeleteHeatRegions(name_);  // a killed run's
    if (heat_ && !heat_->Sample(first, max, backward, std::chrono::steady_clock::now()).ok()) heat_.reset();
  }
  void EndObserve() {
    const auto end = observe_from_ + std::chrono::milliseconds(kObserveMs);
    const auto now = std::chrono::steady_clock::now();
    if (now < end)
      ::usleep(useconds_t(std::chrono::duration_cast<std::chrono::microseconds>(end - now).count()));
    (void)ZoneLength(first_, 0, backward_);
    if (heat_ && !heat_->Sample(first_, max_, backward_, std::chrono::steady_clock::now()).ok()) heat_.reset();
  }

  double backoff_total() const { return backoff_total_; }
  double backoff_max() const { return backoff_max_; }

  // Ends the run: the guardian restores the mapping (the helper resumed first); returns its verdict.
  Status Finish() {
    if (guardian_ <= 0) return Status::Ok();
    ::close(pipe_);
    int status = 0;
    pid_t r;
    while ((r = ::waitpid(guardian_, &status, 0)) < 0 && errno == EINTR) {
    }
    guardian_ = -1;
    WaitPendingUdev();  // a zone left held: the guardian has resumed the helper by now
    if (r < 0) return PosixError("waiting for the online guardian", errno);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      return IOError(name_ + ": restoring /dev/mapper/" + name_ + " after the operation failed (see above)");
    return Status::Ok();
  }

 private:
  luks2::Volume& v_;
  VolumeRef ref_;
  std::string name_;
  std::map<int, const SecureBuffer*> keys_;
  // The udev event of NAME's last resume (dm::ResumeNoWait), waited for after the helper's resume.
  std::optional<uint32_t> udev_cookie_;
  void WaitPendingUdev() { dm::WaitUdev(udev_cookie_); }

  // Creates the crypt helpers of the layouts the operation uses (dm_online.h: NAME-dshzn,
  // NAME-dshzd, NAME-dshzo), each over the whole extent its layout may reach. One that cannot be
  // made is done without: NAME's table then keeps that layout's own crypt targets (slower
  // steps, the same data).
  void MakeCryptHelpers() {
    auto st = engine::ReadState(v_.metadata(), v_.data_device().Size());
    if (!st.ok() || !*st) return;
    const engine::State& s = **st;
    const uint64_t device_sectors = v_.data_device().Size() / kSector;
    const auto make = [&](const std::string& n, const luks2::SegmentInfo& seg, int digest,
                          const std::string& over) {
      if (seg.type != "crypt") return;
      const auto k = keys_.find(digest);
      if (k == keys_.end()) return;
      dm::Segment c;
      c.type = dm::Segment::Type::kCrypt;
      c.cipher = seg.cipher;
      c.sector_size = seg.sector_size;
      c.key = k->second->span();
      c.device_sector = seg.offset / kSector;
      c.iv_offset = seg.iv_tweak;
      c.sectors = s.data_size / kSector;
      c.device = over;
      if (c.sectors == 0 || c.device_sector + c.sectors > device_sectors) return;
      dm::Activation a;
      a.name = n;
      a.device = ref_.device;
      std::string hex = v_.metadata().uuid;
      hex.erase(std::remove(hex.begin(), hex.end(), '-'), hex.end());
      a.dm_uuid = std::string(kCryptUuidPrefix) + hex + "-" + n;
      a.private_device = true;
      a.segments = {c};
      if (!dm::Create(a).ok()) return;
      crypt_helpers_.push_back({"/dev/mapper/" + n, c});
    };
    make(HotNewName(name_), s.new_seg, s.digest_new, HzPath(name_));
    make(DoneName(name_), s.new_seg, s.digest_new, "");
    make(OldName(name_), s.old_seg, s.digest_old, "");
  }

  // Reads a small sysfs file of NAME (not the volume: safe while a zone is held) into `out`.
  bool ReadSysfs(const char* file, char* out, size_t n) const {
    if (sysfs_.empty()) return false;
    const int fd = ::open((sysfs_ + "/" + file).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const ssize_t r = ::read(fd, out, n - 1);
    ::close(fd);
    if (r <= 0) return false;
    out[r] = 0;
    return true;
  }

  // Reads and writes NAME completed (its users' I/O: the engine's goes to the data device).
  uint64_t UserIos() const {
    char buf[256];
    if (!ReadSysfs("stat", buf, sizeof buf)) return 0;
    unsigned long long f[5] = {};
    if (std::sscanf(buf, "%llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3], &f[4]) != 5) return 0;
    return f[0] + f[4];
  }

  // Waits, at most kMaxBackOff, for NAME to have no I/O in flight.
  void BackOff() {
    const auto t0 = std::chrono::steady_clock::now();
    double waited = 0;
    for (;;) {
      char buf[64];
      unsigned long long r = 0, w = 0;
      if (!ReadSysfs("inflight", buf, sizeof buf) || std::sscanf(buf, "%llu %llu", &r, &w) != 2 || r + w == 0) break;
      waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (waited >= kMaxBackOff) break;
      ::usleep(1000);
    }
    backoff_total_ += waited;
    backoff_max_ = std::max(backoff_max_, waited);
  }

  // Each step also costs a fixed ~50 ms in the QEMU guest (table load, suspend/resume, two
  // commits): a shorter target would spend most of the step on that. A longer one makes a
  // user's write more likely to land in a held zone and wait for it: with zones read and written
  // around the page cache, cold zones of 0.6 s gave the bench's workload a p99 of 3-12x its
  // latency alone, 0.45 s 2-8x, 0.3 s 2x in four runs (README "Online").
  static constexpr double kBusyHold = 0.2;          // seconds
  static constexpr double kColdHold = 0.3;          // seconds, a busy run's zone in a cold area
  static constexpr uint64_t kMinBusyZone = 2u << 20;
  static constexpr uint64_t kFirstBusyZone = 4u << 20;  // before any step measured the rate
  static constexpr uint64_t kHotZone = 1u << 20;        // a zone where users work: the step's fixed cost dominates
  static constexpr uint64_t kHeatArea = 1u << 20;
  static constexpr uint64_t kBusyIos = 4;
  static constexpr int kObserveMs = 100;
  static constexpr double kMaxBackOff = 0.05;       // seconds
  static constexpr int kBusyMemoryMs = 1000;

  bool read_only_;
  std::string held_;  // the device suspended while a zone is held (Start)
  std::vector<CryptHelper> crypt_helpers_;  // made by Start; NAME's steps route over them
  int pipe_ = -1;
  pid_t guardian_ = -1;
  std::string sysfs_;
  std::chrono::steady_clock::time_point observe_from_;
  uint64_t first_ = 0, max_ = 0;
  bool backward_ = false;
  uint64_t last_ios_ = 0;
  uint64_t held_len_ = 0;
  double rate_ = 0;  // bytes/s of the last long step
  std::optional<ZoneHeat> heat_;  // none without device-mapper statistics
  std::chrono::steady_clock::time_point busy_until_;
  std::chrono::steady_clock::time_point held_at_;
  double backoff_total_ = 0, backoff_max_ = 0;
};

// The new layout's encryption sector becomes the mapping's logical block size as zones switch:
// it must not exceed the smallest I/O of the filesystem on it (which would break while mounted).
Status CheckSectorFits(Env& env, luks2::Volume& v, const std::string& name) {
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
  if (!st || st->new_seg.type != "crypt") return Status::Ok();
  const uint32_t now = st->old_seg.type == "crypt" ? st->old_seg.sector_size : 512;
  if (st->new_seg.sector_size <= now) return Status::Ok();
  DS_ASSIGN_OR_RETURN(auto top, env.Open("/dev/mapper/" + name, OpenOptions{}));
  Bytes first(size_t(std::min<uint64_t>(volume::kSignatureProbeBytes, top->Size())));
  DS_RETURN_IF_ERROR(top->ReadAt(0, first));
  auto sig = volume::ProbeSignature(first);
  const uint32_t unit = sig && sig->io_unit ? sig->io_unit : 512;
  if (st->new_seg.sector_size > unit)
    return InvalidArgument(name + ": the new encryption sector size " + std::to_string(st->new_seg.sector_size) +
                           " is larger than the " + (sig ? sig->type : std::string("data")) + "'s I/O unit (" +
                           std::to_string(unit) + " bytes): the mounted filesystem would fail; close it and run offline, "
                           "or initialise with --sector-size " + std::to_string(unit));
  return Status::Ok();
}

// Whether NAME must first be switched onto the header's table over the data device: only an
// adopted NAME (online/adopt.h) still on its original table, which must be the data device's own
// table (the same blocks), target by target. NAME over the data device or the helper: false.
Result<bool> NeedsTakeOver(const VolumeRef& ref, const std::string& name, const dm::MappingInfo& top) {
  struct stat st;
  if (::stat(ref.device.c_str(), &st) != 0) return PosixError(ref.device, errno);
  DS_ASSIGN_OR_RETURN(auto helpers, HelperDevices(name));
  for (dev_t d : top.deps)
    if (d == st.st_rdev || std::find(helpers.begin(), helpers.end(), d) != helpers.end()) return false;
  DS_ASSIGN_OR_RETURN(auto raw, dm::Find(RawName(name)));
  const std::string refuse = name + ": /dev/mapper/" + name + " does not map " + ref.device + "; refusing to run under it";
  if (!raw || raw->dev != st.st_rdev) return Busy(refuse);
  DS_ASSIGN_OR_RETURN(auto mine, dm::LiveTargets(name));
  DS_ASSIGN_OR_RETURN(auto copy, dm::LiveTargets(RawName(name)));
  if (mine != copy) return Busy(refuse + " (its table is not " + RawName(name) + "'s)");
  return true;
}

void PrintTimings(const std::string& name, const std::vector<engine::StepTiming>& ts, double backoff_total,
                  double backoff_max) {
  engine::StepTiming sum;
  double held_max = 0;
  for (const auto& t : ts) {
    const double held = t.hold + t.read + t.resilience + t.commit_flag + t.write + t.sync + t.commit_done + t.release;
    held_max = std::max(held_max, held);
    std::fprintf(stderr,
                 "timing %s zone off=%llu len=%llu hold=%.3f read=%.3f resilience=%.3f commit_flag=%.3f write=%.3f "
                 "sync=%.3f commit_done=%.3f release=%.3f total=%.3f\n",
                 name.c_str(), (unsigned long long)t.offset, (unsigned long long)t.len, t.hold, t.read, t.resilience,
                 t.commit_flag, t.write, t.sync, t.commit_done, t.release, held);
    sum.len += t.len;
    sum.hold += t.hold, sum.read += t.read, sum.resilience += t.resilience, sum.commit_flag += t.commit_flag;
    sum.write += t.write, sum.sync += t.sync, sum.commit_done += t.commit_done, sum.release += t.release;
  }
  std::fprintf(stderr,
               "timing %s sum zones=%zu bytes=%llu hold=%.3f read=%.3f resilience=%.3f commit_flag=%.3f write=%.3f "
               "sync=%.3f commit_done=%.3f release=%.3f longest_step=%.3f backoff_total=%.3f backoff_max=%.3f\n",
               name.c_str(), ts.size(), (unsigned long long)sum.len, sum.hold, sum.read, sum.resilience,
               sum.commit_flag, sum.write, sum.sync, sum.commit_done, sum.release, held_max, backoff_total,
               backoff_max);
}

// Whether the prepared mapping `name` (over the device `dev`) has v's table now (dm_online.h).
Result<bool> PreparedFollows(luks2::Volume& v, const std::string& name, dev_t dev) {
  DS_ASSIGN_OR_RETURN(auto targets, dm::LiveTargets(name));
  DS_ASSIGN_OR_RETURN(auto layout, HeaderLayout(v));
  DS_ASSIGN_OR_RETURN(auto helpers, HelperDevices(name));
  return FollowsLayout(targets, layout, dev, helpers);
}

}  // namespace

std::string HotzoneName(const std::string& name) { return name + "-dshz"; }
std::string QueueName(const std::string& name) { return name + "-dshzq"; }
std::string HotNewName(const std::string& name) { return name + "-dshzn"; }
std::string DoneName(const std::string& name) { return name + "-dshzd"; }
std::string OldName(const std::string& name) { return name + "-dshzo"; }
std::vector<std::string> MappingHolders(const std::string& name) {
  return {name, HotzoneName(name), QueueName(name), HotNewName(name), DoneName(name), OldName(name)};
}
bool IsHelper(const dm::MappingInfo& m) {
  return m.uuid.rfind(kHotzoneUuidPrefix, 0) == 0 || m.uuid.rfind(kQueueUuidPrefix, 0) == 0 ||
         m.uuid.rfind(kCryptUuidPrefix, 0) == 0;
}

Result<std::vector<dev_t>> HelperDevices(const std::string& name) {
  std::vector<dev_t> out;
  for (const std::string& n : MappingHolders(name)) {
    if (n == name) continue;
    DS_ASSIGN_OR_RETURN(auto m, dm::Find(n));
    if (m) out.push_back(m->dev);
  }
  return out;
}

std::vector<dm::Segment> RouteOverCryptHelpers(const std::vector<dm::Segment>& segs,
                                               const std::vector<CryptHelper>& helpers) {
  std::vector<dm::Segment> out = segs;
  for (auto& s : out) {
    if (s.type != dm::Segment::Type::kCrypt) continue;
    for (const auto& h : helpers) {
      const dm::Segment& c = h.seg;
      if (c.device != s.device || c.cipher != s.cipher || c.sector_size != s.sector_size ||
          !std::equal(c.key.begin(), c.key.end(), s.key.begin(), s.key.end()))
        continue;
      if (s.device_sector < c.device_sector) continue;
      const uint64_t rel = s.device_sector - c.device_sector;
      // dm-crypt's IV is the sector within its target plus iv_offset: the same for both only
      // when the segment's IV is the helper's at the same place.
      if (s.iv_offset != c.iv_offset + rel || rel + s.sectors > c.sectors) continue;
      dm::Segment l;
      l.type = dm::Segment::Type::kLinear;
      l.sectors = s.sectors;
      l.device_sector = rel;
      l.device = h.path;
      s = l;
      break;
    }
  }
  return out;
}
const dm::MappingInfo& UserFacingHolder(const std::vector<dm::MappingInfo>& holders) {
  for (const auto& m : holders)
    if (!IsHelper(m)) return m;
  return holders.front();
}

Result<std::optional<std::string>> ActiveMapping(const std::string& luks_uuid, const std::string& data_device,
                                                 luks2::Volume* v) {
  if (!dm::Available()) return std::optional<std::string>();
  struct stat st;
  if (::stat(data_device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return std::optional<std::string>();
  DS_ASSIGN_OR_RETURN(auto holders, dm::Holders(st.st_rdev));
  for (const auto& m : holders)
    if (m.uuid == dm::MakeUuid(luks_uuid, m.name)) return std::optional<std::string>(m.name);
  if (v) {
    for (const auto& m : holders) {
      if (!dm::IsPreparedLinear(m.uuid)) continue;
      DS_ASSIGN_OR_RETURN(bool follows, PreparedFollows(*v, m.name, st.st_rdev));
      if (follows) return std::optional<std::string>(m.name);
    }
  }
  return std::optional<std::string>();
}

Result<std::vector<LayoutPiece>> HeaderLayout(luks2::Volume& v) {
  std::vector<LayoutPiece> out;
  const uint64_t dev_size = v.data_device().Size();
  for (const auto& seg : luks2::Segments(v.metadata())) {
    if (std::any_of(seg.flags.begin(), seg.flags.end(), [](const std::string& f) { return f.rfind("backup-", 0) == 0; }))
      continue;
    if (seg.type != "crypt" && seg.type != "linear")
      return Unsupported(v.name() + ": segment " + std::to_string(seg.id) + " has type '" + seg.type + "'");
    DS_ASSIGN_OR_RETURN(uint64_t bytes, luks2::SegmentBytes(seg, dev_size));
    out.push_back({bytes / kSector, seg.offset / kSector, seg.type == "crypt"});
  }
  if (out.empty()) return Corrupt(v.name() + ": the header describes no data segment");
  return out;
}

bool IsLinearOneToOne(const std::vector<dm::TargetInfo>& t, dev_t dev, uint64_t sectors) {
  return t.size() == 1 && t[0].type == "linear" && t[0].start == 0 && t[0].sectors == sectors && sectors > 0 &&
         t[0].device == dev && t[0].device_sector == 0;
}

bool FollowsLayout(const std::vector<dm::TargetInfo>& t, const std::vector<LayoutPiece>& layout, dev_t dev,
                   const std::vector<dev_t>& helpers) {
  uint64_t total = 0;
  for (const auto& p : layout) total += p.sectors;
  uint64_t at = 0;
  for (const auto& x : t) {
    if (x.start != at || x.sectors == 0 || x.start + x.sectors > total) return false;
    at = x.start + x.sectors;
    if (std::find(helpers.begin(), helpers.end(), x.device) != helpers.end()) continue;  // the run's own routing
    if (x.device != dev || (x.type != "crypt" && x.type != "linear")) return false;
    // The piece holding the target's first sector; the target must end inside it.
    uint64_t p0 = 0;
    const LayoutPiece* in = nullptr;
    for (const auto& p : layout) {
      if (x.start >= p0 && x.start < p0 + p.sectors) {
        in = &p;
        break;
      }
      p0 += p.sectors;
    }
    if (!in || x.start + x.sectors > p0 + in->sectors) return false;
    if ((x.type == "crypt") != in->crypt || x.device_sector != in->device_sector + (x.start - p0)) return false;
  }
  return at == total && total > 0;
}

Status AdoptPreparedMapping(luks2::Volume& v, const VolumeRef& ref, const std::string& name,
                            const std::map<int, const SecureBuffer*>& keys, uint64_t hotzone_bytes) {
  DS_ASSIGN_OR_RETURN(auto m, dm::Find(name));
  if (!m) return NotFound(name + ": /dev/mapper/" + name + " does not exist");
  if (!dm::IsPreparedLinear(m->uuid))
    return Busy(name + ": /dev/mapper/" + name + " is not diskseal's prepared linear mapping (dm UUID '" + m->uuid +
                "'); refusing to switch its table");
  struct stat st;
  if (::stat(ref.device.c_str(), &st) != 0) return PosixError(ref.device, errno);
  if (!S_ISBLK(st.st_mode)) return InvalidArgument(ref.device + ": not a block device");
  // An online run under it killed with its guardian: its held zone finished and the plain table
  // of the header back first (a switch now would drop the writes queued in the zone).
  DS_RETURN_IF_ERROR(RestoreLeftovers(ref, name, keys, hotzone_bytes));
  DS_ASSIGN_OR_RETURN(v, LoadFresh(ref));  // that restore may have committed a held zone
  DS_ASSIGN_OR_RETURN(auto targets, dm::LiveTargets(name));
  DS_ASSIGN_OR_RETURN(auto layout, HeaderLayout(v));
  const uint64_t sectors = v.data_device().Size() / kSector;
  // The 1:1 linear table follows v's layout only while v maps every sector of the device as it
  // is (nothing encrypted yet); a table that follows a later layout was adopted earlier in this
  // boot (a run stopped, or killed and its mapping restored).
  const bool one_to_one = IsLinearOneToOne(targets, st.st_rdev, sectors);
  if (!FollowsLayout(targets, layout, st.st_rdev, {}))
    return Busy(name + ": /dev/mapper/" + name + "'s table is not " +
                (one_to_one ? std::string("what the header of ") + ref.device + " describes (part of it is encrypted already)"
                            : "a plain 1:1 linear mapping of " + ref.device) +
                "; refusing to switch it (restart the machine: the initramfs then opens the volume from its header)");
  DS_ASSIGN_OR_RETURN(dm::Activation a, TableFor(v, name, ref.device, keys));
  a.read_only = m->read_only;
  return Switch(a);
}

// The mapping the helper `helper` belongs to (its name without the helper's suffix), or "".
static std::string OwnerOfHelper(const std::string& helper) {
  for (const std::string& suffix : {HotzoneName(""), QueueName(""), HotNewName(""), DoneName(""), OldName("")})
    if (helper.size() > suffix.size() && helper.compare(helper.size() - suffix.size(), suffix.size(), suffix) == 0)
      return helper.substr(0, helper.size() - suffix.size());
  return "";
}

Result<bool> RemoveOrphanedHelpers(const std::vector<dm::MappingInfo>& holders) {
  bool removed = false;
  for (const auto& h : holders) {
    const std::string owner = IsHelper(h) ? OwnerOfHelper(h.name) : "";
    if (owner.empty()) continue;
    DS_ASSIGN_OR_RETURN(auto top, dm::Find(owner));
    if (top) continue;
    DS_RETURN_IF_ERROR(RemoveOrphans(owner));  // all of owner's: the next holders are then gone
    removed = true;
  }
  return removed;
}

Status RestoreLeftovers(const VolumeRef& ref, const std::string& name,
                        const std::map<int, const SecureBuffer*>& keys, uint64_t hotzone_bytes) {
  DS_ASSIGN_OR_RETURN(auto helpers, HelperDevices(name));
  DS_ASSIGN_OR_RETURN(auto top, dm::Find(name));
  if (helpers.empty() && !(top && top->suspended)) return Status::Ok();
  if (!top) {
    (void)Restore(ref, name, keys, hotzone_bytes);  // removes the orphaned helper
    return Status::Ok();
  }
  std::cerr << "diskseal: " << name << ": restoring the mapping an interrupted online run left behind\n";
  return Restore(ref, name, keys, hotzone_bytes);
}

// Seconds since this process started (exec, loading, the command's checks and unlock), from
// /proc/self/stat's start time in clock ticks since boot; -1 when unknown. Timing aid only.
double SecondsSinceProcessStart() {
  char buf[1024];
  const int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces and parentheses
  if (!p) return -1;
  unsigned long long start = 0;
  // After ')': field 3 (state) onwards; the start time is field 22.
  if (std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                  &start) != 1)
    return -1;
  struct timespec now;
  if (::clock_gettime(CLOCK_BOOTTIME, &now) != 0) return -1;
  const long hz = ::sysconf(_SC_CLK_TCK);
  if (hz <= 0) return -1;
  return double(now.tv_sec) + double(now.tv_nsec) / 1e9 - double(start) / double(hz);
}

Status RunOnline(luks2::Volume& v, const VolumeRef& ref, const std::string& name,
                 const std::map<int, const SecureBuffer*>& keys, engine::EngineOptions eo) {
  const double t_process = SecondsSinceProcessStart();
  // Seconds of each phase around the steps, for DISKSEAL_ONLINE_TIMING below.
  using PhaseClock = std::chrono::steady_clock;
  auto since = [last = PhaseClock::now()]() mutable {
    const auto now = PhaseClock::now();
    const double d = std::chrono::duration<double>(now - last).count();
    last = now;
    return d;
  };
  DS_RETURN_IF_ERROR(RestoreLeftovers(ref, name, keys, eo.hotzone_bytes));
  // A zone a killed run left held was finished by that restore, which committed the header on
  // disk: `v`, loaded before, would still show it flagged.
  DS_ASSIGN_OR_RETURN(v, LoadFresh(ref));
  DS_ASSIGN_OR_RETURN(auto top, dm::Find(name));
  if (!top) return NotFound(name + ": /dev/mapper/" + name + " is not open");
  DS_RETURN_IF_ERROR(CheckSectorFits(*ref.env, v, name));
  DS_ASSIGN_OR_RETURN(bool take_over, NeedsTakeOver(ref, name, *top));
  // Every page this process will touch stays in memory: a fault on a page of a file on the volume
  // being switched (the binary itself, for a root volume) would wait for a device we suspended.
  // Every mapped page is made resident first when a mapped file may live there
  // (online/memory_lock.h); otherwise only what is in memory and what the run touches.
  const LockDecision lock = LockScopeFor(*ref.env, top->dev);
  const double t_checks = since();
  if (int e = LockMemory(*ref.env, lock); e != 0)
    return PosixError(name + ": locking memory for the online run (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK)", e);
  const double t_lock = since();
  DmGate gate(v, ref, name, keys, top->read_only);
  {
    // Where the first zone lies, for the gate's I/O statistics (a guess is harmless: the window
    // follows the zones). Observed from here (after the memory lock, whose page-ins of a root
    // volume would look like users' I/O), while the helpers are made.
    auto st = engine::ReadState(v.metadata(), v.data_device().Size());
    const uint64_t max = std::min<uint64_t>(eo.hotzone_bytes, st.ok() && *st ? (*st)->data_size : 0);
    const bool backward = st.ok() && *st && (*st)->backward;
    const uint64_t first = st.ok() && *st && max ? (*st)->StepOffset(std::min((*st)->done, (*st)->data_size - max), max) : 0;
    gate.BeginObserve(top->dev, first, max, backward);
  }
  Status started = gate.Start(eo.hotzone_bytes, lock);
  if (!started.ok()) {
    DeleteHeatRegions(name);
    (void)munlockall();
    return started;
  }
  if (take_over) {
    // The adoption (online/adopt.h): NAME gets the header's table over the data device, the same
    // blocks it mapped, now that the guardian restores it however the run ends.
    Status switched = [&]() -> Status {
      DS_ASSIGN_OR_RETURN(dm::Activation a, TableFor(v, name, ref.device, keys));
      a.read_only = top->read_only;
      return Switch(a);
    }();
    if (!switched.ok()) {
      Status fin = gate.Finish();
      (void)munlockall();
      return fin.ok() ? switched : switched.WithContext(fin.message());
    }
    std::cerr << "diskseal: " << name << ": /dev/mapper/" << name << " now maps the volume over " << ref.device
              << " (no remount)\n";
  }
  std::array<double, 4> t_before{};  // checks, lock, helpers+guardian(+adoption), observe
  {
    const double t_start = since();
    gate.EndObserve();
    t_before = {t_checks, t_lock, t_start, since()};
  }
  eo.in_use = true;
  eo.users_bypass_cache = true;  // they write through NAME
  eo.gate = &gate;
  // DISKSEAL_ONLINE_TIMING=1: where each hotzone step's time went, on stderr after the run
  // (nothing is written while a zone is held). A profiling aid for bench/online.sh.
  std::vector<engine::StepTiming> timings;
  const char* want_timing = std::getenv("DISKSEAL_ONLINE_TIMING");
  if (want_timing && *want_timing == '1') {
    timings.reserve(4096);
    eo.timings = &timings;
  }
  Status run = engine::RunOperation(v, keys, eo);
  const double t_run = since();
  Status fin = gate.Finish();
  (void)munlockall();
  const double t_finish = since();
  if (eo.timings) {
    PrintTimings(name, timings, gate.backoff_total(), gate.backoff_max());
    std::fprintf(stderr,
                 "timing %s phases before=%.2f checks=%.3f lock=%.3f start=%.3f observe=%.3f run=%.3f finish=%.3f\n",
                 name.c_str(), t_process, t_before[0], t_before[1], t_before[2], t_before[3], t_run, t_finish);
    std::fprintf(stderr, "timing %s lock=%s (%s)\n", name.c_str(), lock.scope == LockScope::kAll ? "all" : "on-fault",
                 lock.why.c_str());
  }
  if (!run.ok() || !fin.ok()) {
    // Someone closed NAME under the run (possible while it is not mounted): the engine stopped
    // at its next switch, before flagging another zone, and the guardian removed the helper.
    auto still = dm::Find(name);
    if (still.ok() && !*still)
      return NotFound(name + ": /dev/mapper/" + name + " was closed by someone else during the operation; it "
                      "stopped at a commit point and nothing is lost: open it again and run `diskseal resume` "
                      "to carry on");
  }
  if (!run.ok()) return fin.ok() ? run : run.WithContext(fin.message());
  return fin;
}

}  // namespace ds::online
