#include "cli/machine_config.h"

#include <algorithm>

#include "machine/config_file.h"

namespace ds::cli {

bool ReadsMachineConfig(const std::string& command) {
  static const char* const kCommands[] = {"enable", "disable", "status", "doctor", "resume", "recover"};
  return std::any_of(std::begin(kCommands), std::end(kCommands), [&](const char* c) { return command == c; });
}

void AddConfigOption(CLI::App& app, std::string& path) {
  app.add_option("--config", path,
                 std::string("machine configuration file (default ") + machine::kDefaultConfigPath +
                     "; flags given here win over it)");
}

Status ApplyMachineConfig(Env& env, CLI::App& app, const std::string& path) {
  const bool named = !path.empty();
  DS_ASSIGN_OR_RETURN(auto cfg, machine::LoadMachineConfig(env, named ? path : machine::kDefaultConfigPath, named));
  if (!cfg) return Status::Ok();
  // `enable --no-escrow` on a machine whose file names a vault: the flag says "no vault" by name,
  // so the file's vault settings stay out (a flag wins over the file).
  const CLI::Option* no_escrow = app.get_option_no_throw("--no-escrow");
  const bool skip_vault = no_escrow && no_escrow->count() > 0;
  for (const machine::ConfigEntry& e : cfg->entries) {
    CLI::Option* opt = app.get_option_no_throw("--" + e.key);
    if (!opt || opt->count() > 0) continue;  // not this command's flag, or given on the command line
    if (skip_vault && (e.key.rfind("vault", 0) == 0 || e.key.rfind("kek", 0) == 0)) continue;
    try {
      opt->add_result(e.value);
      opt->run_callback();
    } catch (const CLI::Error& err) {
      return InvalidArgument(cfg->path + ":" + std::to_string(e.line) + ": key '" + e.key + "': " + err.what());
    }
  }
  return Status::Ok();
}

}  // namespace ds::cli
