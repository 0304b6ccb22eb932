#include "vault/vault_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

#include "crypto/crypto.h"

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
  if (!create && !env.Exists(paths.db()))
    return NotFound(paths.dir + ": no vault here (start one with `diskseal vault serve --dir`)");
  DS_ASSIGN_OR_RETURN(MasterKey master, MasterKey::LoadOrCreate(env, paths.master_key_file, create));
  DS_ASSIGN_OR_RETURN(auto store, OpenSqliteStore(paths.db()));
  ::chmod(paths.db().c_str(), 0600);
  DS_RETURN_IF_ERROR(CheckMasterKey(*store, master, create).WithContext(paths.dir));
  return OpenedVault{std::move(store), std::move(master)};
}

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

Result<std::string> CreateToken(VaultStore& store, const std::string& name,
                                const std::vector<std::string>& perms) {
  if (name.empty() || name.size() > 64 ||
      !std::all_of(name.begin(), name.end(),
                   [](char c) { return std::isalnum(uint8_t(c)) || c == '-' || c == '_' || c == '.'; }))
    return InvalidArgument("token name '" + name + "' must be 1-64 of [A-Za-z0-9._-]");
  uint8_t raw[32];
  DS_RETURN_IF_ERROR(RandomBytes(raw));
  std::string token = "dsv1." + Base64UrlEncode(raw);
  TokenRecord t{name, HashToken(token), perms, int64_t(std::time(nullptr)), false};
  DS_RETURN_IF_ERROR(store.AddToken(t));
  return token;
}

Status RevokeToken(Env& env, const VaultPaths& paths, VaultStore& store, const std::string& name) {
  DS_RETURN_IF_ERROR(store.RevokeToken(name));
  // A new file (new inode) each time: the server compares inode and mtime, so even two revocations
  // within the file system's timestamp granularity are seen.
  return env.WriteFileAtomic(paths.token_stamp(), std::to_string(std::time(nullptr)) + "\n", 0600);
}

Status RestoreVault(Env& env, const VaultPaths& paths, const std::string& backup_file) {
  if (!env.Exists(backup_file)) return NotFound(backup_file + ": no such backup file");
  // A running server holds this lock; replacing its database under it would lose writes.
  int fd = ::open(paths.lock().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(paths.lock(), errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return Busy(paths.dir + ": a vault server is running on this directory; stop it first");
  }
  Status s = [&]() -> Status {
    DS_ASSIGN_OR_RETURN(MasterKey master, MasterKey::LoadOrCreate(env, paths.master_key_file, false));
    std::string staged = paths.db() + ".restore";
    DS_ASSIGN_OR_RETURN(std::string data, env.ReadFile(backup_file, uint64_t(1) << 34));
    DS_RETURN_IF_ERROR(env.WriteFileAtomic(staged, data, 0600));
    {
      DS_ASSIGN_OR_RETURN(auto store, OpenSqliteStore(staged));
      DS_RETURN_IF_ERROR(CheckMasterKey(*store, master, false).WithContext(backup_file));
      DS_ASSIGN_OR_RETURN(auto tokens, store->ListTokens());  // proves the schema is readable
      (void)tokens;
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
  return s;
}

}  // namespace ds::vault
