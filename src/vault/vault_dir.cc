#include "vault/vault_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

#include <nlohmann/json.hpp>

#include "crypto/crypto.h"
#include "util/bytes.h"
#include "vault/service.h"

namespace ds::vault {

namespace {
constexpr const char* kCheckKey = "master-check";
constexpr const char* kCheckContext = "meta/master-check";
constexpr std::string_view kCheckPlain = "diskseal vault master key check v1";
}  // namespace

Status CheckMasterKey(VaultStore& store, const MasterKey& master, bool record_if_new) {
  auto check = store.GetMeta(kCheckKey);
  if (!check.ok() && check.status().code() != Code::kNotFound) return check.status();
  if (!check.ok()) {
    if (!record_if_new) return Corrupt("vault database has no master key check record");
    DS_ASSIGN_OR_RETURN(Bytes sealed, master.Seal(AsBytes(kCheckPlain), kCheckContext));
    return store.PutMeta(kCheckKey, sealed);
  }
  auto opened = master.Open(*check, kCheckContext);
  if (!opened.ok() || opened->view() != kCheckPlain)
    return PermissionDenied("the master key does not belong to this vault database");
  return Status::Ok();
}

Result<OpenedVault> OpenVault(Env& env, const VaultPaths& paths, bool create) {
  if (create && ::mkdir(paths.dir.c_str(), 0700) != 0 && errno != EEXIST)
    return PosixError(paths.dir, errno);
  bool have_db = env.Exists(paths.db());
  if (!create && !have_db)
    return NotFound(paths.dir + ": no vault here (start one with `diskseal vault serve --dir`)");
  if (create) {
    // Decided before anything is written: a new key beside an old database (or a new database
    // beside an old key) would look like a fresh vault and lose every escrowed key.
    bool have_key = env.Exists(paths.master_key_file);
    if (have_db && !have_key)
      return NotFound(paths.master_key_file + ": the master key file is missing, and " + paths.db() +
                      " was sealed under it; put the key back (or name it with --master-key): a new "
                      "key cannot open this vault, so none is made");
    bool held_a_vault = env.Exists(paths.initialized()) || env.Exists(paths.audit_log()) ||
                        (have_key && paths.master_key_file == paths.dir + "/master.key");
    if (!have_db && held_a_vault)
      return NotFound(paths.db() + ": the vault database is missing from a directory that held a "
                      "vault; restore it with `diskseal vault restore --dir " + paths.dir +
                      " --from BACKUP`, or move the directory away to start an empty vault");
  }
  DS_ASSIGN_OR_RETURN(MasterKey master, MasterKey::LoadOrCreate(env, paths.master_key_file, create));
  DS_ASSIGN_OR_RETURN(auto store, OpenSqliteStore(paths.db()));
  ::chmod(paths.db().c_str(), 0600);
  DS_RETURN_IF_ERROR(CheckMasterKey(*store, master, create).WithContext(paths.dir));
  if (create) {
    if (!env.Exists(paths.initialized()))
      DS_RETURN_IF_ERROR(env.WriteFileAtomic(
          paths.initialized(), "diskseal vault; vault.db and the master key belong together\n", 0600));
    DS_RETURN_IF_ERROR(ApplyRevocationList(env, paths, *store).status());
  }
  return OpenedVault{std::move(store), std::move(master)};
}

Status BeginServing(Env& env, const VaultPaths& paths, AuditLog& audit) {
  time_t now = std::time(nullptr);
  char when[32];
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (env.Exists(paths.running())) {
    std::string previous;
    if (auto r = env.ReadFile(paths.running(), 4096); r.ok()) previous = *r;
    while (!previous.empty() && previous.back() == '\n') previous.pop_back();
    nlohmann::ordered_json line = {{"time", when},
                                   {"event", "previous run ended without a clean stop"},
                                   {"previous", previous}};
    DS_RETURN_IF_ERROR(audit.Record(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))
                           .WithContext(paths.audit_log()));
  }
  return env.WriteFileAtomic(paths.running(),
                             "pid " + std::to_string(::getpid()) + " started " + when + "\n", 0600);
}

void EndServing(const VaultPaths& paths) { ::unlink(paths.running().c_str()); }

const std::vector<std::string>& AllPermissions() {
  static const std::vector<std::string> kAll = {
      "secrets:get",  "secrets:list", "secrets:set",    "secrets:delete", "secrets:recover",
      "secrets:purge", "keys:get",    "keys:list",      "keys:create",    "keys:rotate",
      "keys:wrap",    "keys:unwrap",  "keys:delete",    "keys:recover",   "keys:purge"};
  return kAll;
}

Result<std::vector<std::string>> ParsePermissions(std::string_view csv) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= csv.size()) {
    size_t comma = csv.find(',', pos);
    if (comma == std::string_view::npos) comma = csv.size();
    std::string p(csv.substr(pos, comma - pos));
    pos = comma + 1;
    if (p.empty()) continue;
    if (p == "all") return AllPermissions();
    const auto& all = AllPermissions();
    if (std::find(all.begin(), all.end(), p) == all.end())
      return InvalidArgument("unknown permission '" + p + "' (known: all, secrets:get, ..., keys:unwrap)");
    if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
  }
  if (out.empty()) return InvalidArgument("--allow needs at least one permission");
  return out;
}

std::string HashToken(std::string_view token) {
  auto h = Hash("sha256", AsBytes(token));
  return h.ok() ? HexEncode(*h) : std::string();
}

bool ValidMachineName(std::string_view s) {
  return !s.empty() && s.size() <= 64 &&
         std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(uint8_t(c)) || c == '-' || c == '_' || c == '.'; });
}

Result<int64_t> ParseLifetime(std::string_view s) {
  if (s == "never") return int64_t(0);
  int64_t unit = 1;
  std::string_view digits = s;
  if (!s.empty() && !std::isdigit(uint8_t(s.back()))) {
    switch (s.back()) {
      case 'd': unit = 86400; break;
      case 'h': unit = 3600; break;
      case 'm': unit = 60; break;
      case 's': unit = 1; break;
      default: unit = 0;
    }
    digits = s.substr(0, s.size() - 1);
  }
  auto n = ParseU64(digits);
  if (unit == 0 || !n || *n == 0 || *n > uint64_t(100) * 365 * 86400 / uint64_t(unit))
    return InvalidArgument("--expires '" + std::string(s) +
                           "': use a positive number of days, hours, minutes or seconds (90d, 12h, "
                           "30m, 3600s; at most 100 years) or never");
  return int64_t(*n) * unit;
}

Result<std::string> CreateToken(VaultStore& store, const std::string& name,
                                const std::vector<std::string>& perms, const TokenOptions& options) {
  if (!ValidMachineName(name))
    return InvalidArgument("token name '" + name + "' must be 1-64 of [A-Za-z0-9._-]");
  if (!options.machine.empty() && !ValidMachineName(options.machine))
    return InvalidArgument("machine name '" + options.machine + "' must be 1-64 of [A-Za-z0-9._-]");
  uint8_t raw[32];
  DS_RETURN_IF_ERROR(RandomBytes(raw));
  std::string token = "dsv1." + Base64UrlEncode(raw);
  int64_t now = int64_t(std::time(nullptr));
  TokenRecord t{name, HashToken(token), perms, now, false, options.machine,
                options.lifetime_seconds > 0 ? now + options.lifetime_seconds : 0};
  DS_RETURN_IF_ERROR(store.AddToken(t));
  return token;
}

namespace {
// The hashes in the revocation list (an absent file is an empty list).
Result<std::vector<std::string>> ReadRevocationList(Env& env, const VaultPaths& paths) {
  std::vector<std::string> out;
  if (!env.Exists(paths.revoked_list())) return out;
  DS_ASSIGN_OR_RETURN(std::string text, env.ReadFile(paths.revoked_list(), uint64_t(1) << 26));
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    std::string hash = line.substr(0, line.find(' '));
    if (hash.empty()) continue;
    if (hash.size() != 64) return Corrupt(paths.revoked_list() + ": a line is not 'sha256-hex name'");
    out.push_back(hash);
  }
  return out;
}
}  // namespace

Result<size_t> ApplyRevocationList(Env& env, const VaultPaths& paths, VaultStore& store) {
  DS_ASSIGN_OR_RETURN(auto hashes, ReadRevocationList(env, paths));
  if (hashes.empty()) return size_t(0);
  std::sort(hashes.begin(), hashes.end());
  DS_ASSIGN_OR_RETURN(auto tokens, store.ListTokens());
  size_t applied = 0;
  for (const TokenRecord& t : tokens) {
    if (t.revoked || !std::binary_search(hashes.begin(), hashes.end(), t.hash_hex)) continue;
    DS_RETURN_IF_ERROR(store.RevokeToken(t.name));
    ++applied;
  }
  return applied;
}

Status RevokeToken(Env& env, const VaultPaths& paths, VaultStore& store, const std::string& name) {
  DS_ASSIGN_OR_RETURN(auto tokens, store.ListTokens());
  auto it = std::find_if(tokens.begin(), tokens.end(), [&](const TokenRecord& t) { return t.name == name; });
  if (it == tokens.end()) return NotFound("token '" + name + "' does not exist");
  // The list first: if the database update then fails, the next start or restore applies it.
  std::string list;
  if (env.Exists(paths.revoked_list())) {
    DS_ASSIGN_OR_RETURN(list, env.ReadFile(paths.revoked_list(), uint64_t(1) << 26));
  }
  if (list.find(it->hash_hex) == std::string::npos) {
    list += it->hash_hex + " " + name + "\n";
    DS_RETURN_IF_ERROR(env.WriteFileAtomic(paths.revoked_list(), list, 0600));
  }
  DS_RETURN_IF_ERROR(store.RevokeToken(name));
  // A new file (new inode) each time: the server compares inode and mtime, so even two revocations
  // within the file system's timestamp granularity are seen.
  return env.WriteFileAtomic(paths.token_stamp(), std::to_string(std::time(nullptr)) + "\n", 0600);
}

Result<RestoreReport> RestoreVault(Env& env, const VaultPaths& paths, const std::string& backup_file) {
  if (!env.Exists(backup_file)) return NotFound(backup_file + ": no such backup file");
  // A running server holds this lock; replacing its database under it would lose writes.
  int fd = ::open(paths.lock().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(paths.lock(), errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return Busy(paths.dir + ": a vault server is running on this directory; stop it first");
  }
  RestoreReport report;
  Status s = [&]() -> Status {
    DS_ASSIGN_OR_RETURN(MasterKey master, MasterKey::LoadOrCreate(env, paths.master_key_file, false));
    std::string staged = paths.db() + ".restore";
    DS_ASSIGN_OR_RETURN(std::string data, env.ReadFile(backup_file, uint64_t(1) << 34));
    DS_RETURN_IF_ERROR(env.WriteFileAtomic(staged, data, 0600));
    {
      DS_ASSIGN_OR_RETURN(auto store, OpenSqliteStore(staged));
      DS_RETURN_IF_ERROR(CheckMasterKey(*store, master, false).WithContext(backup_file));
      // Tokens revoked after the backup was taken stay revoked.
      DS_ASSIGN_OR_RETURN(report.revocations_reapplied, ApplyRevocationList(env, paths, *store));
    }
    // The old WAL belongs to the old database; it must not be replayed onto the restored one.
    ::unlink((paths.db() + "-wal").c_str());
    ::unlink((paths.db() + "-shm").c_str());
    ::unlink((staged + "-wal").c_str());
    ::unlink((staged + "-shm").c_str());
    if (::rename(staged.c_str(), paths.db().c_str()) != 0) return PosixError(paths.db(), errno);
    return Status::Ok();
  }();
  ::close(fd);
  if (!s.ok()) return s;
  DS_RETURN_IF_ERROR(env.WriteFileAtomic(paths.initialized(),
                                         "diskseal vault; vault.db and the master key belong together\n", 0600));
  return report;
}

}  // namespace ds::vault
