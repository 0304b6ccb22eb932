// The machine workflow: `diskseal enable`, `disable`, `status` (ADE's operations and its status
// words), over the data volumes discovery finds. The work is in src/machine/enable.h and
// status.h; this file turns flags into their options and results into text or JSON.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/luks_options.h"
#include "cli/vault_options.h"
#include "machine/doctor.h"
#include "machine/enable.h"
#include "machine/status.h"
#include "util/process.h"

namespace ds::cli {

namespace {

std::atomic<bool> g_machine_stop{false};

void OnStopSignal(int) { g_machine_stop.store(true); }

struct MachineArgs {
  std::string volume_type;
  VaultOptions vault;
  std::vector<std::string> ignore;
  std::string state_dir = "/var/lib/diskseal";
  std::string etc_dir;
  std::string run_dir = "/run/diskseal";
  std::vector<std::string> only;
  bool progress_json = false, no_wait = false, userspace = false, no_escrow = false, offline = false;
  std::string resilience = "checksum";
  uint64_t hotzone = 32u << 20;
  luks2::PbkdfOptions pbkdf;
  int freeze_at_percent = -1;
  std::string freeze_at_step;
};

void AddMachineArgs(CLI::App& app, Globals& g, MachineArgs& a, bool enable) {
  app.add_option("--volume-type", a.volume_type, "Data, OS or All (as ADE's VolumeType)")
      ->required()
      ->check(CLI::IsMember({"Data", "OS", "All"}));
  app.add_option("--state-dir", a.state_dir, "state, key files and headers (default /var/lib/diskseal)");
  app.add_option("--etc-dir", a.etc_dir, "where fstab and crypttab are edited (default /etc)");
  app.add_option("--run-dir", a.run_dir, "userspace views (default /run/diskseal)");
  app.add_option("--only", a.only, "act only on the data volume mounted here (repeatable)");
  app.add_flag("--no-wait", a.no_wait, "fail (exit 5) instead of waiting when another run holds the lock");
  app.add_flag("--json", g.json, "print the result as JSON");
  app.add_flag("--progress-json", a.progress_json, "progress as JSON lines on stderr");
  app.add_flag("--userspace", a.userspace, "open through FUSE even where device-mapper exists");
  app.add_flag("--offline", a.offline, "keep the volume unmounted for the whole encryption (default: online where "
                                       "device-mapper exists: one remount of seconds, then encrypted while mounted)");
  AddHotzoneSizeOption(app, a.hotzone, "bytes per engine step (default 32M)");
  AddPbkdfOptions(app, a.pbkdf);
  if (enable) {
    AddVaultConnectionOptions(app, a.vault);
    app.add_option("--kek", a.vault.kek, "vault key that wraps each escrowed passphrase");
    app.add_option("--kek-alg", a.vault.kek_alg, "wrap algorithm: RSA-OAEP (default), RSA-OAEP-256, A256KW");
    app.add_flag("--no-escrow", a.no_escrow,
                 "encrypt without a vault: keys and headers stay only on this machine's disk (lost with it)");
    app.add_option("--ignore", a.ignore, "do not block on this doctor check (repeat or comma-separate)")
        ->delimiter(',');
    app.add_option("--resilience", a.resilience, "checksum (default) or journal");
  }
  // Tests only: stop at a known point of the engine so kill -9 lands there without timing.
  app.add_option("--test-freeze-at-percent", a.freeze_at_percent)->group("");
  app.add_option("--test-freeze-at-step", a.freeze_at_step)->group("");
}

Result<machine::EnableOptions> MakeOptions(Globals& g, const MachineArgs& a, const char* verb,
                                           std::unique_ptr<vault::VaultClient>& client) {
  machine::EnableOptions o;
  o.root.dir = "/";
  o.root.etc_dir = a.etc_dir;
  o.root.env = g.env;
  o.state_dir = a.state_dir;
  o.run_dir = a.run_dir;
  for (const auto& m : a.only) o.only.push_back(m);
  DS_ASSIGN_OR_RETURN(o.resilience, engine::ParseResilience(a.resilience));
  if (o.resilience == engine::Resilience::kNone)
    return InvalidArgument("--resilience none is not offered for whole machines: a crash would lose data");
  o.hotzone_bytes = a.hotzone;
  o.pbkdf = a.pbkdf;
  o.userspace = a.userspace;
  o.offline = a.offline;
  if (a.vault.enabled()) {
    DS_ASSIGN_OR_RETURN(client, MakeVaultClient(*g.env, a.vault));
    o.vault = client.get();
    o.kek = a.vault.kek;
    o.kek_alg = a.vault.kek_alg;
    // The OS volume's initramfs fetches the key with the same vault settings (a token FILE).
    o.os.vault_url = a.vault.url;
    o.os.vault_token_file = a.vault.token_file;
    o.os.vault_ca = a.vault.ca_file;
  }
  o.os.rebuild_initramfs = [](std::ostream& log) -> Status {
    // initramfs-tools only: a dracut module is not written yet (doctor says so first).
    if (::access("/usr/sbin/update-initramfs", X_OK) != 0 && ::access("/sbin/update-initramfs", X_OK) != 0)
      return Unsupported("update-initramfs (initramfs-tools) is not installed; diskseal's boot script needs it (dracut is not supported yet)");
    log << "running update-initramfs -u -k all\n";
    log.flush();
    DS_ASSIGN_OR_RETURN(int rc, RunProgram({"update-initramfs", "-u", "-k", "all"}));
    if (rc != 0) return IOError("update-initramfs -u -k all failed with exit status " + std::to_string(rc) + " (its output is above)");
    return Status::Ok();
  };
  // The command that continues this run: the same flags, paths and names only.
  o.command = std::string("diskseal ") + verb + " --volume-type " + a.volume_type;
  if (a.state_dir != "/var/lib/diskseal") o.command += " --state-dir " + a.state_dir;
  if (!a.etc_dir.empty()) o.command += " --etc-dir " + a.etc_dir;
  if (a.run_dir != "/run/diskseal") o.command += " --run-dir " + a.run_dir;
  for (const auto& m : a.only) o.command += " --only " + m;
  if (a.userspace) o.command += " --userspace";
  if (a.offline) o.command += " --offline";
  if (a.vault.enabled()) {
    o.command += " --vault " + a.vault.url;
    if (!a.vault.token_file.empty()) o.command += " --vault-token-file " + a.vault.token_file;
    if (!a.vault.token_env.empty()) o.command += " --vault-token-env " + a.vault.token_env;
    if (!a.vault.ca_file.empty()) o.command += " --vault-ca " + a.vault.ca_file;
    if (!a.vault.kek.empty()) o.command += " --kek " + a.vault.kek;
  } else if (a.no_escrow) {
    o.command += " --no-escrow";
  }
  o.wait_for_lock = !a.no_wait;
  o.progress_mode = Progress::AutoMode(isatty(2), a.progress_json);
  o.log = g.err;
  o.stop = &g_machine_stop;
  o.freeze_at_percent = a.freeze_at_percent;
  o.freeze_at_step = a.freeze_at_step;
  // diskseal doctor first, on the volumes this run starts: a blocking finding not --ignore'd
  // stops the run before anything is written, with the finding named.
  const VaultOptions vault = a.vault;
  const std::vector<std::string> ignore = a.ignore;
  const std::string header_dir = a.state_dir;
  std::ostream* err = g.err;
  const machine::MachineRoot root = o.root;
  const uint64_t hotzone = o.hotzone_bytes;
  const luks2::PbkdfOptions pbkdf = o.pbkdf;
  machine::EnableOptions adopt_check;  // only what EncryptsWithoutUnmount reads
  adopt_check.offline = o.offline;
  adopt_check.userspace = o.userspace;
  o.preflight = [vault, ignore, header_dir, err, root, hotzone, pbkdf, adopt_check](
                    const machine::Machine& m, const std::vector<std::string>& starting) -> Status {
    machine::DoctorOptions d;
    // The OS flow asks for "/" alone; its header goes to /boot.
    const bool os = starting.size() == 1 && starting.front() == "/";
    d.volume_type = os ? machine::VolumeType::kOs : machine::VolumeType::kData;
    d.ignore = ignore;
    d.header_dir = os ? "/boot" : header_dir;
    d.hotzone_bytes = hotzone;
    d.pbkdf_memory_bytes = pbkdf.type == "pbkdf2" ? 0 : uint64_t(pbkdf.memory_kib) << 10;
    d.self_pid = int(::getpid());
    d.only = starting;
    // A linear LVM logical volume stays mounted throughout (online/adopt.h): open files are fine.
    for (const auto& v : m.volumes)
      if (std::find(starting.begin(), starting.end(), v.mountpoint) != starting.end() &&
          machine::EncryptsWithoutUnmount(v, adopt_check))
        d.no_unmount.push_back(v.mountpoint);
    if (vault.enabled()) {
      vault::VaultClientOptions vo;
      vo.url = vault.url;
      vo.token_file = vault.token_file;
      vo.token_env = vault.token_env;
      vo.ca_file = vault.ca_file;
      d.vault = vo;
      d.kek = vault.kek;
    }
    DS_ASSIGN_OR_RETURN(machine::Report report, machine::RunDoctor(root, m, d));
    const bool worth_showing = std::any_of(report.findings.begin(), report.findings.end(), [](const machine::Finding& f) {
      return f.severity != machine::Severity::kInfo;
    });
    if (worth_showing) *err << machine::FormatText(report);
    return machine::ReportStatus(report).WithContext("enable stopped");
  };
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  return o;
}

void Print(Globals& g, const std::vector<machine::VolumeOutcome>& vols, const char* os_note) {
  if (g.json) {
    nlohmann::ordered_json j;
    auto list = nlohmann::ordered_json::array();
    for (const auto& v : vols)
      list.push_back({{"mountpoint", v.mountpoint}, {"device", v.device}, {"name", v.name},
                      {"result", v.result}, {"plaintext", v.plaintext}, {"header", v.header},
                      {"key_file", v.key_file},
                      {"secret_id", v.secret_id.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(v.secret_id)}});
    j["volumes"] = std::move(list);
    j["os_volume"] = os_note ? nlohmann::ordered_json(os_note) : nlohmann::ordered_json();
    *g.out << j.dump(2) << "\n";
    return;
  }
  for (const auto& v : vols)
    *g.out << v.mountpoint << " (" << v.device << "): " << v.result
           << (v.plaintext.empty() || v.result.rfind("skipped", 0) == 0 ? "" : ", mounted from " + v.plaintext) << "\n";
  if (os_note)
    *g.out << "OS volume: " << os_note
           << (std::string(os_note) == "VMRestartPending" ? ": restart the machine; the OS volume is then encrypted online "
                                                             "while it runs (diskseal status shows the progress)"
                                                           : "")
           << "\n";
}

}  // namespace

Runner SetupEnable(CLI::App& app, Globals& g) {
  auto a = std::make_shared<MachineArgs>();
  AddMachineArgs(app, g, *a, true);
  return [a, &g]() -> Status {
    // Escrow is the default, as in ADE: doing without it is asked for by name.
    if (!a->vault.enabled() && !a->no_escrow)
      return InvalidArgument("enable: no --vault given, so no key or header would be escrowed and the volumes could not be "
                             "recovered if this machine's disk is lost; pass --vault URL ... or, to accept that, --no-escrow");
    if (a->vault.enabled() && a->no_escrow) return InvalidArgument("enable: --vault and --no-escrow contradict each other");
    if (a->volume_type != "Data" && !a->vault.enabled())
      return InvalidArgument("enable --volume-type " + a->volume_type +
                             ": the OS volume needs a vault (--vault URL --vault-token-file FILE): the initramfs fetches its "
                             "key from there at every boot");
    if (a->volume_type != "Data" && a->vault.token_file.empty())
      return InvalidArgument("enable --volume-type " + a->volume_type +
                             ": the OS volume needs the vault token in a file (--vault-token-file): the initramfs, which "
                             "fetches the key at boot, has no environment to take it from");
    std::unique_ptr<vault::VaultClient> client;
    DS_ASSIGN_OR_RETURN(machine::EnableOptions o, MakeOptions(g, *a, "enable", client));
    std::vector<machine::VolumeOutcome> vols;
    std::string os_note;
    // The OS volume first, as ADE orders VolumeType All.
    if (a->volume_type != "Data") {
      DS_ASSIGN_OR_RETURN(vols, machine::EnableOsVolume(*g.env, o));
      os_note = vols.front().result;
    }
    if (a->volume_type != "OS") {
      DS_ASSIGN_OR_RETURN(auto data, machine::EnableDataVolumes(*g.env, o));
      for (auto& v : data) vols.push_back(std::move(v));
    }
    Print(g, vols, os_note.empty() ? nullptr : os_note.c_str());
    return Status::Ok();
  };
}

Status ResumeAll(Globals& g, const std::string& state_dir, const VaultOptions& vault, uint64_t hotzone,
                 bool progress_json, int freeze_at_percent) {
  MachineArgs a;
  a.volume_type = "Data";
  a.state_dir = state_dir;
  a.vault = vault;
  a.hotzone = hotzone;
  a.progress_json = progress_json;
  a.freeze_at_percent = freeze_at_percent;
  std::unique_ptr<vault::VaultClient> client;
  DS_ASSIGN_OR_RETURN(machine::EnableOptions o, MakeOptions(g, a, "resume --all", client));
  o.command = "diskseal resume --all" + std::string(state_dir != "/var/lib/diskseal" ? " --state-dir " + state_dir : "");
  DS_ASSIGN_OR_RETURN(auto vols, machine::ResumeRecordedVolumes(*g.env, o));
  Print(g, vols, nullptr);
  return Status::Ok();
}

Runner SetupDisable(CLI::App& app, Globals& g) {
  auto a = std::make_shared<MachineArgs>();
  AddMachineArgs(app, g, *a, false);
  return [a, &g]() -> Status {
    std::unique_ptr<vault::VaultClient> client;
    DS_ASSIGN_OR_RETURN(machine::EnableOptions o, MakeOptions(g, *a, "disable", client));
    std::vector<machine::VolumeOutcome> vols;
    std::string os_note;
    if (a->volume_type != "OS") {
      DS_ASSIGN_OR_RETURN(vols, machine::DisableDataVolumes(*g.env, o));
    }
    if (a->volume_type != "Data") {
      DS_ASSIGN_OR_RETURN(auto os, machine::DisableOsVolume(*g.env, o));
      if (!os.empty()) os_note = os.front().result;
      for (auto& v : os) vols.push_back(std::move(v));
    }
    Print(g, vols, os_note.empty() ? nullptr : os_note.c_str());
    return Status::Ok();
  };
}

Runner SetupStatus(CLI::App& app, Globals& g) {
  struct Opts {
    std::string root = "/", state_dir = "/var/lib/diskseal", etc_dir;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--root", o->root, "read a captured machine tree instead of this machine");
  app.add_option("--state-dir", o->state_dir, "enable's state directory (default /var/lib/diskseal)");
  app.add_option("--etc-dir", o->etc_dir, "where fstab and crypttab are read (default <root>/etc)");
  app.add_flag("--json", g.json, "print the status as JSON");
  return [o, &g]() -> Status {
    machine::MachineRoot root;
    root.dir = o->root;
    root.etc_dir = o->etc_dir;
    root.env = g.env;
    DS_ASSIGN_OR_RETURN(machine::MachineStatus s, machine::GetStatus(*g.env, root, o->state_dir));
    *g.out << (g.json ? machine::StatusToJson(s) : machine::StatusToText(s));
    return Status::Ok();
  };
}

}  // namespace ds::cli
