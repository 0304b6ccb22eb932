// `diskseal open DEVICE NAME`, `close NAME`, `list`: a LUKS2 volume's plaintext through the kernel
// (dm-crypt, /dev/mapper/NAME) where device-mapper exists, else (or with --userspace) through a
// FUSE daemon serving RUN/NAME as a regular file (RUN = /run/diskseal).
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <map>

#include <nlohmann/json.hpp>

#include "cli/claim.h"
#include "cli/commands.h"
#include "cli/luks_options.h"
#include "dm/dm.h"
#include "dm/volume_table.h"
#include "engine/engine.h"
#include "engine/reencrypt_state.h"
#include "fuse/daemon.h"
#include "fuse/file_server.h"
#include "fuse/run_dir.h"
#include "luks2/metadata.h"
#include "online/dm_online.h"

namespace ds::cli {

namespace {

constexpr char kDefaultRunDir[] = "/run/diskseal";

std::string Canonical(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

// "/dev/vda" for a dm dependency, from sysfs (no udev needed).
std::string BlockDevName(dev_t d) {
  std::ifstream f("/sys/dev/block/" + std::to_string(major(d)) + ":" +
                  std::to_string(minor(d)) + "/uevent");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("DEVNAME=", 0) == 0) return "/dev/" + line.substr(8);
  return std::to_string(major(d)) + ":" + std::to_string(minor(d));
}

// Frees NAME when a crash left it behind, refuses it when it is really in use (kBusy).
Status ClaimName(Globals& g, fuse::RunDir& run, const std::string& name) {
  DS_ASSIGN_OR_RETURN(auto rec, run.Find(name));
  if (rec) {
    if (fuse::RunDir::IsAlive(*rec))
      return Busy(name + ": name in use: already open in userspace (" + rec->file + ", pid " +
                  std::to_string(rec->pid) + ")");
    *g.err << "diskseal: " << name << ": removing a stale userspace mapping (daemon pid "
           << rec->pid << " is gone)\n";
    DS_RETURN_IF_ERROR(run.CleanupStale(*rec));
  }
  DS_ASSIGN_OR_RETURN(auto dmm, dm::Find(name));
  if (dmm) {
    if (!dm::IsStale(*dmm))
      return Busy(name + ": name in use: /dev/mapper/" + name + " exists");
    *g.err << "diskseal: " << name << ": removing a stale device-mapper mapping (no table)\n";
    DS_RETURN_IF_ERROR(dm::Remove(name));
  }
  return Status::Ok();
}

// Refuses a device another mapping already uses (kBusy), naming that mapping. Orphaned helpers
// of an online run are removed first (told on `err`).
Status CheckDeviceFree(fuse::RunDir& run, const std::string& device, std::ostream& err) {
  DS_ASSIGN_OR_RETURN(auto recs, run.List());
  for (const auto& r : recs)
    if (r.device == device && fuse::RunDir::IsAlive(r))
      return Busy(device + ": already open as " + r.name + " (userspace, " + r.file + ")");
  struct stat st;
  if (::stat(device.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
    DS_ASSIGN_OR_RETURN(auto holders, dm::Holders(st.st_rdev));
    // What an online run killed with its guardian leaves once its mapping was closed by someone
    // else: nothing uses it, and it would refuse the device for good.
    DS_ASSIGN_OR_RETURN(bool removed, online::RemoveOrphanedHelpers(holders));
    if (removed) {
      err << "diskseal: " << device << ": removed the helper devices of an online run whose mapping was closed\n";
      DS_ASSIGN_OR_RETURN(holders, dm::Holders(st.st_rdev));
    }
    if (!holders.empty())
      return Busy(device + ": already open as /dev/mapper/" + online::UserFacingHolder(holders).name);
  }
  return Status::Ok();
}

// The run directories holding a mounted view, other than `run_dir` (compared canonically).
std::vector<std::string> OtherRunDirs(const std::string& run_dir) {
  std::vector<std::string> out;
  const std::string mine = Canonical(run_dir);
  for (const std::string& d : fuse::MountedRunDirs())
    if (Canonical(d) != mine) out.push_back(d);
  return out;
}

uint32_t LargestSectorSize(const luks2::Metadata& md) {
  uint32_t s = 512;
  for (const auto& seg : luks2::Segments(md))
    if (seg.type == "crypt") s = std::max(s, seg.sector_size);
  return s;
}

}  // namespace

Runner SetupOpen(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    std::string name;
    KeySource keys;
    SlotArg slot;
    bool userspace = false, read_only = false;
    unsigned threads = 8;
    std::string run_dir = kDefaultRunDir;
    VaultOptions vault;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddVaultOptions(app, o->vault);
  app.add_option("name", o->name, "name of the opened volume (/dev/mapper/NAME or RUN/NAME)")
      ->required();
  AddKeyOptions(app, o->keys);
  AddSlotOption(app, o->slot, "try only this keyslot");
  app.add_flag("--userspace", o->userspace,
               "serve the plaintext through FUSE as a regular file even where device-mapper "
               "exists (the default without device-mapper)");
  app.add_flag("--readonly,-r", o->read_only, "open read-only");
  app.add_option("--threads", o->threads, "userspace: threads serving requests (default 8)")
      ->check(CLI::Range(1, 64));
  app.add_option("--run-dir", o->run_dir, "userspace: where served files and records live "
                 "(default /run/diskseal)");
  app.add_flag("--json", g.json, "print the result as JSON");
  return [o, &g]() -> Status {
    DS_RETURN_IF_ERROR(fuse::ValidateVolumeName(o->name));
    const bool userspace = o->userspace || !dm::Available();
    if (userspace) DS_RETURN_IF_ERROR(fuse::CheckFuseAvailable());
    fuse::RunDir run(*g.env, o->run_dir);
    DS_RETURN_IF_ERROR(ClaimName(g, run, o->name));
    const std::string device = Canonical(o->dev.device);
    DS_RETURN_IF_ERROR(CheckDeviceFree(run, device, *g.err));
    // Held for the view's whole life: the daemon forked below inherits the lock and keeps it until
    // it exits (close); read-write views are the device's only owner, read-only ones share it.
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev,
                                                 o->read_only ? ClaimMode::kShared : ClaimMode::kExclusive, false));
    // Only the userspace view writes through diskseal; a kernel mapping writes nothing to the
    // device or the header, which may sit on a read-only filesystem (the OS volume's header on
    // /boot, mounted read-only by the initramfs).
    auto header_on_ro_fs = [&] {
      if (o->dev.header.empty() || IsBlockDevice(o->dev.header)) return false;
      auto fs = g.env->StatFs(o->dev.header);
      return fs.ok() && fs->read_only;
    };
    if (userspace && !o->read_only && header_on_ro_fs())
      return PermissionDenied(o->dev.device + ": " + o->dev.header + " is on a read-only filesystem and a "
                              "read-write userspace view writes its header (an operation it carries on, a hotzone "
                              "it recovers): remount it read-write, or open with --readonly");
    DS_ASSIGN_OR_RETURN(OpenedVolume ov, LoadAndUnlock(g, o->dev, o->keys, o->slot.get(),
                                                       userspace && !o->read_only, &o->vault));
    luks2::Volume& v = ov.volume;
    // An in-place operation in progress opens as the header describes it (done part new, the rest
    // old): the online engine carries it on under the mapping (`diskseal resume`). A hotzone left
    // flagged by a crash is recovered first, here, while nothing uses the device.
    if (auto st = engine::ReadState(v.metadata(), v.data_device().Size()); st.ok() && *st && (*st)->hotzone_len) {
      if (o->read_only)
        return Busy(o->dev.device + ": an in-place operation was interrupted mid-hotzone; open it read-write once "
                    "(it is recovered first) or run `diskseal resume`");
      // The recovery writes the device and the header: loaded read-write for it (a kernel open is
      // otherwise read-only), and the result is what gets opened. A header file on a read-only
      // filesystem (a /boot mounted read-only) is named as such rather than failing with the bare
      // EROFS of its first write.
      if (header_on_ro_fs())
        return PermissionDenied(o->dev.device + ": " + o->dev.header + " records an interrupted hotzone, which "
                                "opening recovers first and that writes the header, but it is on a read-only "
                                "filesystem: remount it read-write and open again (nothing was changed)");
      DS_ASSIGN_OR_RETURN(luks2::Volume rw, luks2::Volume::Load(*g.env, o->dev.device, o->dev.header, true));
      engine::EngineOptions eo;
      eo.until_done = (*st)->done + *(*st)->hotzone_len;
      DS_RETURN_IF_ERROR(engine::RunOperation(rw, ov.Keys(), eo).WithContext(o->dev.device + ": recovering the interrupted hotzone"));
      ov.volume = std::move(rw);
      *g.err << "diskseal: " << o->dev.device << ": recovered the hotzone an interrupted operation left\n";
    }
    const std::map<int, const SecureBuffer*> keys = ov.Keys();
    nlohmann::ordered_json j = {{"name", o->name}, {"device", device}};
    if (!userspace) {
      dm::Activation a;
      a.name = o->name;
      a.luks_uuid = v.metadata().uuid;
      a.device = device;
      a.read_only = o->read_only;
      DS_ASSIGN_OR_RETURN(a.segments, dm::VolumeSegments(v, keys));
      DS_RETURN_IF_ERROR(dm::Create(a));
      j["mode"] = "kernel";
      j["path"] = "/dev/mapper/" + o->name;
    } else {
      DS_ASSIGN_OR_RETURN(std::unique_ptr<BlockDevice> view, v.OpenData(keys));
      fuse::StartRequest req;
      req.name = o->name;
      req.device = device;
      req.header = o->dev.header.empty() ? "" : Canonical(o->dev.header);
      req.uuid = v.metadata().uuid;
      req.read_only = o->read_only;
      req.atomic_unit = LargestSectorSize(v.metadata());
      req.threads = o->threads;
      req.env = g.env;
      DS_ASSIGN_OR_RETURN(fuse::Mapping m, fuse::StartDaemon(run, view.get(), req));
      j["mode"] = "userspace";
      j["path"] = m.file;
      j["pid"] = m.pid;
    }
    if (g.json) {
      *g.out << j.dump(2) << "\n";
    } else {
      *g.out << "Opened " << o->dev.device << " as " << j["path"].get<std::string>() << " ("
             << j["mode"].get<std::string>() << ")\n";
    }
    return Status::Ok();
  };
}

Runner SetupClose(CLI::App& app, Globals& g) {
  struct Opts {
    std::string name;
    std::string run_dir = kDefaultRunDir;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("name", o->name, "the name given to open")->required();
  CLI::Option* run_opt = app.add_option("--run-dir", o->run_dir,
                                        "userspace: where served files and records live (default /run/diskseal, "
                                        "else any run directory with a view of NAME mounted)");
  return [o, &g, run_opt]() -> Status {
    DS_RETURN_IF_ERROR(fuse::ValidateVolumeName(o->name));
    fuse::RunDir run(*g.env, o->run_dir);
    DS_ASSIGN_OR_RETURN(auto rec, run.Find(o->name));
    if (rec) {
      bool stale = !fuse::RunDir::IsAlive(*rec);
      DS_RETURN_IF_ERROR(fuse::StopDaemon(run, *rec));
      *g.out << (stale ? "Removed stale mapping " : "Closed ") << o->name << "\n";
      return Status::Ok();
    }
    DS_ASSIGN_OR_RETURN(auto dmm, dm::Find(o->name));
    if (dmm) {
      if (!dm::IsLuks2(*dmm) && !dm::IsStale(*dmm))
        return InvalidArgument(o->name + ": /dev/mapper/" + o->name +
                               " is not a LUKS2 mapping; diskseal does not close it");
      DS_RETURN_IF_ERROR(dm::Remove(o->name));
      *g.out << "Closed " << o->name << "\n";
      return Status::Ok();
    }
    // A view opened with another --run-dir: found through its mount, closed where it lives.
    // Only without --run-dir: a named directory is the only place looked at.
    std::vector<fuse::Mapping> elsewhere;
    std::vector<std::string> dirs;
    for (const std::string& dir : run_opt->count() ? std::vector<std::string>{} : OtherRunDirs(o->run_dir)) {
      fuse::RunDir other(*g.env, dir);
      auto found = other.Find(o->name);
      if (found.ok() && *found) {
        elsewhere.push_back(**found);
        dirs.push_back(dir);
      }
    }
    if (elsewhere.size() > 1) {
      std::string list;
      for (const auto& d : dirs) list += (list.empty() ? "" : ", ") + d;
      return InvalidArgument(o->name + ": open in several run directories (" + list + "); name one with --run-dir");
    }
    if (elsewhere.size() == 1) {
      fuse::RunDir other(*g.env, dirs[0]);
      const bool stale = !fuse::RunDir::IsAlive(elsewhere[0]);
      DS_RETURN_IF_ERROR(fuse::StopDaemon(other, elsewhere[0]));
      *g.out << (stale ? "Removed stale mapping " : "Closed ") << o->name << " (--run-dir " << dirs[0] << ")\n";
      return Status::Ok();
    }
    if (run_opt->count())
      return NotFound(o->name + ": no open volume of this name in " + o->run_dir +
                      " or /dev/mapper (without --run-dir, close looks in every run directory with a view mounted)");
    return NotFound(o->name + ": no open volume of this name in " + o->run_dir +
                    ", /dev/mapper or any run directory with a view mounted (a stale view opened with "
                    "--run-dir DIR is cleaned up by `close " + o->name + " --run-dir DIR`)");
  };
}

Runner SetupList(CLI::App& app, Globals& g) {
  auto run_dir = std::make_shared<std::string>(kDefaultRunDir);
  CLI::Option* run_opt = app.add_option("--run-dir", *run_dir,
                                        "userspace: list only the views of this directory (default: /run/diskseal "
                                        "and every other run directory with a view mounted)");
  app.add_flag("--json", g.json, "print the list as JSON");
  return [run_dir, &g, run_opt]() -> Status {
    fuse::RunDir run(*g.env, *run_dir);
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    DS_ASSIGN_OR_RETURN(auto recs, run.List());
    // Without --run-dir, views opened with another --run-dir too (found through their mounts).
    for (const std::string& dir : run_opt->count() ? std::vector<std::string>{} : OtherRunDirs(*run_dir)) {
      fuse::RunDir other(*g.env, dir);
      auto more = other.List();
      if (more.ok()) recs.insert(recs.end(), more->begin(), more->end());
    }
    for (const auto& r : recs)
      list.push_back({{"name", r.name}, {"mode", "userspace"}, {"device", r.device},
                      {"path", r.file}, {"pid", r.pid}, {"size", r.size},
                      {"read_only", r.read_only},
                      {"state", fuse::RunDir::IsAlive(r) ? "active" : "stale"}});
    DS_ASSIGN_OR_RETURN(auto maps, dm::List());
    for (const auto& m : maps) {
      if (!dm::IsLuks2(m)) continue;
      std::string dev = m.deps.empty() ? "" : BlockDevName(m.deps[0]);
      list.push_back({{"name", m.name}, {"mode", "kernel"}, {"device", dev},
                      {"path", "/dev/mapper/" + m.name}, {"read_only", m.read_only},
                      {"state", dm::IsStale(m) ? "stale" : "active"}});
    }
    if (g.json) {
      *g.out << list.dump(2) << "\n";
      return Status::Ok();
    }
    for (const auto& e : list)
      *g.out << std::left << std::setw(16) << e["name"].get<std::string>() << " "
             << std::setw(10) << e["mode"].get<std::string>() << " " << std::setw(7)
             << e["state"].get<std::string>() << " " << e["device"].get<std::string>() << " -> "
             << e["path"].get<std::string>() << "\n";
    return Status::Ok();
  };
}

}  // namespace ds::cli
