#include "machine/status.h"

#include <signal.h>
#include <stdlib.h>

#include <climits>

#include <cmath>
#include <iomanip>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dm/dm.h"
#include "engine/reencrypt_state.h"
#include "luks2/volume.h"
#include "machine/state.h"

namespace ds::machine {

namespace {

double Floor1(double p) { return std::floor(p * 10) / 10; }

// Percent of the operation recorded in the header, or nullopt when it cannot be read (a device
// of a captured machine tree, or a header copy caught mid-commit: the record's rate is used then).
std::optional<double> HeaderPercent(Env& env, const MachineRoot& root, const VolumeRecord& r) {
  // The devices named in a captured tree's records are not this machine's: never open them.
  if (!root.live() || !env.Exists(r.header)) return std::nullopt;
  auto v = luks2::Volume::Load(env, r.device, r.header, false);
  if (!v.ok()) return std::nullopt;
  auto st = engine::ReadState(v->metadata(), v->data_device().Size());
  if (!st.ok()) return std::nullopt;
  if (!*st) return 100.0;  // no operation left: finished
  const auto& s = **st;
  return s.data_size ? Floor1(100.0 * double(s.done) / double(s.data_size)) : 100.0;
}

std::string MountedAt(const Machine& m, const std::string& mountpoint) {
  std::string src;
  for (const auto& mt : m.mounts)
    if (mt.mountpoint == mountpoint) src = mt.source;
  return src;
}

std::string Canonical(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

// The row of a recorded volume, before its state is worked out.
VolumeStatus FromRecord(const VolumeRecord& r) {
  VolumeStatus v;
  v.mountpoint = r.mountpoint;
  v.device = r.device;
  v.name = r.name;
  v.step = StepName(r.step);
  v.last_error = r.last_error;
  return v;
}

// Speed and time left only from the process that holds the lock now, while its engine runs: a
// rate left by a crashed run describes nothing.
void LiveRate(const VolumeRecord& r, int64_t running_pid, VolumeStatus& v) {
  if (!r.rate.pid || r.rate.pid != running_pid || (r.step != Step::kEncrypting && r.step != Step::kDecrypting)) return;
  v.mib_s = r.rate.mib_s;
  v.eta_s = r.rate.eta_s;
  v.pid = r.rate.pid;
}

std::string Pct(double p) {
  std::ostringstream o;
  o << int(p) << "%";
  return o.str();
}

}  // namespace

Result<MachineStatus> GetStatus(Env& env, const MachineRoot& root, const std::string& state_dir) {
  MachineStatus out;
  DS_ASSIGN_OR_RETURN(Machine m, Discover(root));
  StateDir state(env, state_dir);
  DS_ASSIGN_OR_RETURN(auto records, state.List());
  out.running = MachineLock::Holder(state.LockPath());
  int64_t running_pid = 0;
  if (out.running.rfind("pid ", 0) == 0) running_pid = std::atoll(out.running.c_str() + 4);

  // OS volume: from its record when diskseal manages it (enable.h, the OS flow), else what the
  // machine shows (a root on dm-crypt that some other tool set up counts as encrypted).
  const Volume* os = m.os();
  out.os_volume = os && os->encrypted ? "Encrypted" : "NotEncrypted";
  if (out.os_volume == "NotEncrypted")
    for (const auto& b : m.blocks)
      // A mapping, / not on it; diskseal's prepared linear mapping (no encryption) is no sign.
      if (b.dm_name == "osencrypt" && !dm::IsPreparedLinear(b.dm_uuid)) out.os_volume = "VMRestartPending";
  std::optional<VolumeStatus> os_status;
  std::string os_message;
  for (const auto& r : records) {
    if (!r.os) continue;
    if (r.step == Step::kDisabled) {
      // Decrypted: / may still sit on the (now plain) mapping until the next restart, whose
      // dm UUID discovery reads as encrypted.
      const std::string src = MountedAt(m, "/");
      if ((!src.empty() && Canonical(src) == Canonical("/dev/mapper/" + r.name)) || (os && BuiltOn(m, *os, r.name))) {
        out.os_volume = "NotEncrypted";
        os_message = "Decryption succeeded for the OS volume; it leaves its plain mapping at the next restart";
      }
      continue;
    }
    VolumeStatus v = FromRecord(r);
    const std::string src = MountedAt(m, "/");
    // / on the mapping, or on an LVM logical volume over it.
    bool on_mapping = (!src.empty() && Canonical(src) == Canonical("/dev/mapper/" + r.name)) ||
                      (os && BuiltOn(m, *os, r.name));
    // diskseal's prepared linear mapping becomes the volume's when enable switches its table, in
    // the same run that goes on to encrypt: header placed and no run means it did not (yet).
    if (on_mapping && r.step == Step::kHeaderPlaced && !running_pid)
      for (const auto& b : m.blocks)
        if (b.dm_name == r.name && dm::IsPreparedLinear(b.dm_uuid)) on_mapping = false;
    if (r.step == Step::kPlanned) {
      v.state = "NotEncrypted";  // nothing changed yet
    } else if (r.step >= Step::kDisabling) {
      v.state = r.step >= Step::kPlainMounted ? "NotEncrypted" : "DecryptionInProgress";
      if (r.step == Step::kDecrypting) {
        if (auto p = HeaderPercent(env, root, r)) v.percent = *p;
      }
    } else if (r.step >= Step::kEncrypted) {
      v.state = "Encrypted";
      v.percent = 100;
    } else if (r.step >= Step::kHeaderPlaced && !on_mapping) {
      v.state = "VMRestartPending";
    } else {
      v.state = "EncryptionInProgress";
      if (r.step >= Step::kHeaderPlaced) {
        if (auto p = HeaderPercent(env, root, r)) v.percent = *p;
      }
      LiveRate(r, running_pid, v);
    }
    out.os_volume = v.state;
    if (!r.last_error.empty() && !running_pid)
      os_message = std::string("Failed to ") + (r.step >= Step::kDisabling ? "decrypt" : "encrypt") +
                   " the OS volume with error: " + r.last_error;
    else if (v.state == "VMRestartPending")
      os_message = "VMRestartPending: restart the machine to continue encrypting the OS volume";
    else if (v.state == "DecryptionInProgress")
      os_message = running_pid ? "Decrypting the OS volume: " + Pct(v.percent)
                               : "Decrypting the OS volume interrupted at " + Pct(v.percent) +
                                     ": run `diskseal disable --volume-type OS` to resume";
    else if (v.state == "EncryptionInProgress")
      os_message = running_pid ? "Encrypting the OS volume: " + Pct(v.percent)
                               : "Encrypting the OS volume interrupted at " + Pct(v.percent) +
                                     ": run `diskseal enable --volume-type OS` to resume";
    os_status = std::move(v);
  }

  // "Decryption succeeded" only while it is still true: every volume disable finished is mounted
  // from its own device again (not re-encrypted, unmounted or replaced since).
  bool any_disabled = false, disabled_current = true;
  std::vector<const VolumeRecord*> enabling, disabling;
  for (const auto& r : records) {
    if (r.os) continue;  // above
    if (r.step == Step::kDisabled) {
      any_disabled = true;
      const std::string src = MountedAt(m, r.mountpoint);
      if (src.empty() || Canonical(src) != Canonical(r.device)) disabled_current = false;
      continue;
    }
    VolumeStatus v = FromRecord(r);
    const bool disable = r.step >= Step::kDisabling;
    if (r.step == Step::kConfigured) {
      v.state = MountedAt(m, r.mountpoint).empty() ? "NotMounted" : "Encrypted";
      v.percent = 100;
    } else {
      // Planned only: nothing on the volume has changed yet (the run stopped before unmounting).
      v.state = r.step == Step::kPlanned ? "NotEncrypted"
                : disable                ? "DecryptionInProgress"
                                         : "EncryptionInProgress";
      (disable ? disabling : enabling).push_back(&r);
      if ((!disable && r.step < Step::kHeaderPlaced) || (disable && r.step < Step::kDecrypting)) {
        v.percent = 0;
      } else if ((!disable && r.step >= Step::kEncrypted) || (disable && r.step >= Step::kDecrypted)) {
        v.percent = 100;
      } else if (auto p = HeaderPercent(env, root, r)) {
        v.percent = *p;
      } else if (r.rate.total) {
        v.percent = Floor1(100.0 * double(r.rate.done) / double(r.rate.total));
      }
      LiveRate(r, running_pid, v);
    }
    out.volumes.push_back(std::move(v));
  }
  auto recorded = [&](const Volume& d) {
    for (const auto& r : records)
      if (!r.os && r.step != Step::kDisabled && (r.mountpoint == d.mountpoint || r.device == d.dev || (!r.loop.empty() && r.loop == d.dev)))
        return true;
    return false;
  };
  // The machine's other data volumes are listed as they are. A LUKS device diskseal does not
  // manage (closed, say) is not a data volume of this machine's status: it neither counts as an
  // encrypted one nor makes the managed ones "not mounted".
  const size_t managed = out.volumes.size();
  for (const auto& d : m.volumes) {
    if (d.role != VolumeRole::kData || recorded(d)) continue;
    VolumeStatus v;
    v.mountpoint = d.mountpoint;
    v.device = d.dev;
    v.state = d.encrypted ? "Encrypted" : "NotEncrypted";
    v.percent = v.state == "NotEncrypted" ? 0 : 100;
    out.volumes.push_back(std::move(v));
  }

  // DataVolumesEncrypted describes the volumes diskseal manages when there are any (enable with
  // --only leaves others plaintext by choice; they are listed, not counted), else the machine's.
  const size_t first = managed ? 0 : managed, last = managed ? managed : out.volumes.size();
  auto count = [&](const char* s) {
    return std::count_if(out.volumes.begin() + first, out.volumes.begin() + last,
                         [&](const VolumeStatus& v) { return v.state == s; });
  };
  const size_t n = last - first;
  if (count("EncryptionInProgress")) out.data_volumes = "EncryptionInProgress";
  else if (count("DecryptionInProgress")) out.data_volumes = "DecryptionInProgress";
  else if (n && size_t(count("Encrypted")) == n) out.data_volumes = "Encrypted";
  else if (count("NotMounted") && size_t(count("NotMounted") + count("Encrypted")) == n) out.data_volumes = "NotMounted";
  else out.data_volumes = "NotEncrypted";

  // ProgressMessage: the volume being worked on is numbered among those of its operation.
  auto message = [&](const std::vector<const VolumeRecord*>& list, const char* verb,
                     const char* noun) -> std::string {
    const VolumeRecord* cur = list.front();
    size_t i = 1;
    size_t total = 0;
    if (cur->run_size > 0) {
      // As the run numbered it in its log: a volume it finished still counts.
      i = size_t(cur->run_index);
      total = size_t(cur->run_size);
    } else {
      for (const auto& r : records) {
        if (r.step == Step::kDisabled) continue;
        if ((r.step >= Step::kDisabling) != (cur->step >= Step::kDisabling)) continue;
        ++total;
        if (&r == cur) i = total;
      }
    }
    double pct = 0;
    for (const auto& v : out.volumes)
      if (v.name == cur->name) pct = v.percent;
    const std::string where = "data volume " + std::to_string(i) + "/" + std::to_string(total);
    if (!cur->last_error.empty() && !running_pid)
      return std::string("Failed to ") + noun + " " + where + " (" + cur->mountpoint + ") with error: " + cur->last_error;
    if (!running_pid)
      return std::string(verb) + " " + where + " interrupted at " + Pct(pct) + ": run `diskseal " +
             (cur->step >= Step::kDisabling ? "disable --volume-type Data" : "enable") + "` to resume";
    return std::string(verb) + " " + where + ": " + Pct(pct);
  };
  if (!os_message.empty()) out.progress_message = os_message;
  else if (!enabling.empty()) out.progress_message = message(enabling, "Encrypting", "encrypt");
  else if (!disabling.empty()) out.progress_message = message(disabling, "Decrypting", "decrypt");
  else if (out.data_volumes == "Encrypted") out.progress_message = "Encryption succeeded for data volumes";
  else if (out.data_volumes == "NotMounted") out.progress_message = "Encrypted data volumes are not mounted";
  else if (any_disabled && !managed && disabled_current) out.progress_message = "Decryption succeeded";
  else if (n == 0) out.progress_message = "No data volumes";
  else out.progress_message = "Data volumes are not encrypted";
  if (os_message.empty() && out.os_volume == "Encrypted" && os_status) {
    if (out.data_volumes == "Encrypted") out.progress_message = "Encryption succeeded for all volumes";
    else if (enabling.empty() && disabling.empty()) out.progress_message = "Encryption succeeded for the OS volume";
  }
  if (os_status) out.volumes.insert(out.volumes.begin(), std::move(*os_status));
  return out;
}

std::string StatusToJson(const MachineStatus& s) {
  nlohmann::ordered_json j = {{"OsVolumeEncrypted", s.os_volume},
                              {"DataVolumesEncrypted", s.data_volumes},
                              {"ProgressMessage", s.progress_message},
                              {"running", s.running.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(s.running)}};
  auto vols = nlohmann::ordered_json::array();
  for (const auto& v : s.volumes) {
    nlohmann::ordered_json e = {{"mountpoint", v.mountpoint}, {"device", v.device},
                                {"name", v.name.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(v.name)},
                                {"state", v.state},           {"step", v.step.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(v.step)},
                                {"percent", v.percent}};
    e["mib_s"] = v.mib_s ? nlohmann::ordered_json(std::round(*v.mib_s * 10) / 10) : nlohmann::ordered_json();
    e["eta_s"] = v.eta_s ? nlohmann::ordered_json(int64_t(*v.eta_s)) : nlohmann::ordered_json();
    e["pid"] = v.pid ? nlohmann::ordered_json(*v.pid) : nlohmann::ordered_json();
    e["last_error"] = v.last_error.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(v.last_error);
    vols.push_back(std::move(e));
  }
  j["volumes"] = std::move(vols);
  return j.dump(2) + "\n";
}

std::string StatusToText(const MachineStatus& s) {
  std::ostringstream o;
  o << "OsVolumeEncrypted          : " << s.os_volume << "\n"
    << "DataVolumesEncrypted       : " << s.data_volumes << "\n"
    << "ProgressMessage            : " << s.progress_message << "\n";
  if (!s.volumes.empty()) {
    o << "\n" << std::left << std::setw(24) << "MOUNTPOINT" << std::setw(16) << "DEVICE" << std::setw(22)
      << "STATE" << std::setw(8) << "PERCENT" << std::setw(9) << "MiB/s" << std::setw(9) << "ETA"
      << "ERROR\n";
    for (const auto& v : s.volumes) {
      std::ostringstream pct, rate, eta;
      pct << std::fixed << std::setprecision(1) << v.percent << "%";
      if (v.mib_s) rate << std::fixed << std::setprecision(1) << *v.mib_s;
      else rate << "-";
      if (v.eta_s) {
        int e = int(*v.eta_s);
        eta << e / 3600 << ":" << std::setw(2) << std::setfill('0') << e / 60 % 60 << ":" << std::setw(2) << e % 60;
      } else {
        eta << "-";
      }
      // Long mount points push the row right rather than run into the next column.
      o << std::left << std::setfill(' ') << std::setw(23) << v.mountpoint << " " << std::setw(15)
        << v.device << " " << std::setw(22) << v.state << std::setw(8) << pct.str() << std::setw(9)
        << rate.str() << std::setw(9) << eta.str() << v.last_error << "\n";
    }
  }
  return o.str();
}

}  // namespace ds::machine
