#include "machine/config_file.h"

#include "util/bytes.h"

#include <algorithm>

namespace ds::machine {

namespace {

// The keys, in the order the shipped file documents them. Paths must be absolute: the commands
// run from systemd units and from any working directory.
constexpr ConfigKey kKeys[] = {
    {"vault", "key vault URL (https://host:port, or https://NAME.vault.azure.net)"},
    {"vault-token-file", "file holding the vault bearer token"},
    {"vault-ca", "PEM CA file to trust for the vault (default: the system's CAs)"},
    {"kek", "vault key that wraps each escrowed passphrase"},
    {"kek-alg", "wrap algorithm: RSA-OAEP, RSA-OAEP-256 or A256KW"},
    {"header-dir", "directory doctor checks for room for detached headers"},
    {"state-dir", "enable's state, key files and headers (default /var/lib/diskseal)"},
    // No command's flag: read by the initramfs hook (packaging/initramfs-tools/hooks/diskseal).
    {"os-prepared-mapping", "yes (default) or no: root on a 1:1 linear mapping from every boot, so that "
                            "enable --volume-type OS needs no reboot"},
};

bool IsPathKey(std::string_view k) {
  return k == "vault-token-file" || k == "vault-ca" || k == "header-dir" || k == "state-dir";
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}


std::string KnownKeys() {
  std::string s;
  for (const auto& k : kKeys) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

}  // namespace

std::span<const ConfigKey> ConfigKeys() { return kKeys; }

const ConfigEntry* MachineConfig::Find(std::string_view key) const {
  for (const auto& e : entries)
    if (e.key == key) return &e;
  return nullptr;
}

Result<MachineConfig> ParseMachineConfig(std::string_view text, const std::string& path) {
  MachineConfig cfg;
  cfg.path = path;
  int line_no = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view raw = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    const std::string where = path + ":" + std::to_string(line_no) + ": ";
    const std::string_view line = Trim(raw);
    if (line.empty() || line.front() == '#') continue;
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos)
      return InvalidArgument(where + "expected 'key = value', got '" + std::string(line) + "'");
    const std::string key(Trim(line.substr(0, eq)));
    const std::string value(Trim(line.substr(eq + 1)));
    if (key.empty()) return InvalidArgument(where + "a value without a key: '" + std::string(line) + "'");
    const bool known = std::any_of(std::begin(kKeys), std::end(kKeys), [&](const ConfigKey& k) { return key == k.name; });
    if (!known) {
      std::string best;
      size_t best_d = SIZE_MAX;
      for (const auto& k : kKeys)
        if (size_t d = EditDistance(key, k.name); d < best_d) best_d = d, best = k.name;
      const std::string hint = best_d <= std::max<size_t>(2, key.size() / 3) ? " (did you mean '" + best + "'?)" : "";
      return InvalidArgument(where + "unknown key '" + key + "'" + hint + "; known keys: " + KnownKeys());
    }
    if (value.empty()) return InvalidArgument(where + "key '" + key + "' has no value");
    if (const ConfigEntry* first = cfg.Find(key))
      return InvalidArgument(where + "key '" + key + "' is set again (first on line " + std::to_string(first->line) + ")");
    if (IsPathKey(key) && value.front() != '/')
      return InvalidArgument(where + "key '" + key + "' must be an absolute path, not '" + value + "'");
    if (key == "vault" && value.rfind("https://", 0) != 0)
      return InvalidArgument(where + "key 'vault' must be an https:// URL, not '" + value + "'");
    if (key == "kek-alg" && value != "RSA-OAEP" && value != "RSA-OAEP-256" && value != "A256KW")
      return InvalidArgument(where + "key 'kek-alg' must be RSA-OAEP, RSA-OAEP-256 or A256KW, not '" + value + "'");
    if (key == "os-prepared-mapping" && value != "yes" && value != "no")
      return InvalidArgument(where + "key 'os-prepared-mapping' must be yes or no, not '" + value + "'");
    cfg.entries.push_back({key, value, line_no});
  }
  return cfg;
}

Result<std::optional<MachineConfig>> LoadMachineConfig(Env& env, const std::string& path, bool required) {
  if (!required && !env.Exists(path)) return std::optional<MachineConfig>();
  // A configuration file is a few hundred bytes; 1 MiB bounds a wrong path (a disk image).
  auto text = env.ReadFile(path, 1 << 20);
  if (!text.ok()) return text.status().WithContext("configuration file " + path);
  DS_ASSIGN_OR_RETURN(MachineConfig cfg, ParseMachineConfig(*text, path));
  return std::optional<MachineConfig>(std::move(cfg));
}

}  // namespace ds::machine
