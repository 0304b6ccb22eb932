// `diskseal doctor`: discovery of the machine's volumes, then every check of machine/doctor.h,
// before anything is written. Text (one line per finding, evidence and fix indented) or --json.
#include <unistd.h>

#include <memory>

#include "cli/commands.h"
#include "cli/vault_options.h"
#include "machine/discovery.h"
#include "machine/doctor.h"

namespace ds::cli {

namespace {

struct DoctorFlags {
  std::string volume_type = "Data";
  std::string root = "/";
  std::string header_mode = "detached";
  std::string header_dir = "/var/lib/diskseal";
  std::string state_dir = "/var/lib/diskseal";
  std::vector<std::string> ignore;
  VaultOptions vault;
};

}  // namespace

Runner SetupDoctor(CLI::App& app, Globals& g) {
  auto o = std::make_shared<DoctorFlags>();
  app.add_option("--volume-type", o->volume_type, "volumes to check: Data (default), OS or All");
  app.add_option("--root", o->root, "the machine's root directory (a captured tree; default /)");
  app.add_option("--header-mode", o->header_mode,
                 "where headers go: detached (a file in --header-dir, default) or shrink (ext2/3/4)");
  app.add_option("--header-dir", o->header_dir, "directory for detached header files")
      ->capture_default_str();
  app.add_option("--state-dir", o->state_dir,
                 "the volumes enable recorded, whose detached headers are checked (under --root)")
      ->capture_default_str();
  std::string ids;
  for (const auto& id : machine::CheckIds()) ids += (ids.empty() ? "" : ", ") + id;
  app.add_option("--ignore", o->ignore,
                 "check id(s) not to block on (repeat or comma-separate): " + ids)
      ->delimiter(',');
  app.add_flag("--json", g.json, "print the report as JSON (docs/json-schemas.md)");
  AddVaultConnectionOptions(app, o->vault);
  app.add_option("--kek", o->vault.kek, "also check the key permissions on this vault key");
  return [o, &g]() -> Status {
    machine::DoctorOptions opts;
    DS_ASSIGN_OR_RETURN(opts.volume_type, machine::ParseVolumeType(o->volume_type));
    if (o->header_mode == "detached") opts.header_mode = machine::HeaderMode::kDetached;
    else if (o->header_mode == "shrink") opts.header_mode = machine::HeaderMode::kShrink;
    else return InvalidArgument("--header-mode must be detached or shrink, not '" + o->header_mode + "'");
    opts.header_dir = o->header_dir;
    opts.state_dir = o->state_dir;
    opts.ignore = o->ignore;
    opts.self_pid = int(::getpid());
    if (o->vault.enabled()) {
      if (o->vault.token_file.empty() == o->vault.token_env.empty())
        return InvalidArgument("--vault needs exactly one of --vault-token-file or --vault-token-env");
      vault::VaultClientOptions vo;
      vo.url = o->vault.url;
      vo.token_file = o->vault.token_file;
      vo.token_env = o->vault.token_env;
      vo.ca_file = o->vault.ca_file;
      vo.connect_timeout_ms = 5000;  // a diagnosis should not wait 10 s per stage
      vo.timeout_ms = 15000;
      opts.vault = vo;
      opts.kek = o->vault.kek;
    } else if (!o->vault.kek.empty()) {
      return InvalidArgument("--kek needs --vault");
    }
    machine::MachineRoot root;
    root.dir = o->root;
    root.env = g.env;
    DS_ASSIGN_OR_RETURN(machine::Machine m, machine::Discover(root));
    DS_ASSIGN_OR_RETURN(machine::Report report, machine::RunDoctor(root, m, opts));
    if (g.json) {
      *g.out << machine::ToJson(report).dump(2) << "\n";
      // The report carries blocking and exit_code itself: a second JSON document (the error
      // object main prints) would break a reader of stdout.
      g.json = false;
    } else {
      *g.out << machine::FormatText(report);
    }
    return machine::ReportStatus(report);
  };
}

}  // namespace ds::cli
