// The embedded VaultStore on SQLite. One connection behind a mutex: the vault's statements take
// microseconds, and a single connection keeps "acknowledged means durable" simple (every change is
// one transaction; WAL + synchronous=FULL fsyncs the log before COMMIT returns).
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <mutex>

#include <nlohmann/json.hpp>

#include "vault/store.h"

namespace ds::vault {

namespace {

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS versions(
  kind INTEGER NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL,
  sealed BLOB NOT NULL, content_type TEXT NOT NULL, tags TEXT NOT NULL, meta TEXT NOT NULL,
  enabled INTEGER NOT NULL, nbf INTEGER, exp INTEGER, created INTEGER NOT NULL,
  updated INTEGER NOT NULL, PRIMARY KEY(kind, name, version));
CREATE UNIQUE INDEX IF NOT EXISTS versions_by_seq ON versions(kind, name, seq);
CREATE TABLE IF NOT EXISTS deleted(
  kind INTEGER NOT NULL, name TEXT NOT NULL, deleted_date INTEGER NOT NULL,
  purge_date INTEGER NOT NULL, PRIMARY KEY(kind, name));
CREATE TABLE IF NOT EXISTS tokens(
  name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, perms TEXT NOT NULL,
  created INTEGER NOT NULL, revoked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS owners(
  kind INTEGER NOT NULL, name TEXT NOT NULL, machine TEXT NOT NULL, PRIMARY KEY(kind, name));
)sql";

constexpr const char* kVersionCols =
    "kind, name, version, seq, sealed, content_type, tags, meta, enabled, nbf, exp, created, updated";
constexpr const char* kNotDeleted =
    "NOT EXISTS (SELECT 1 FROM deleted d WHERE d.kind = v.kind AND d.name = v.name)";

class SqliteStore : public VaultStore {
 public:
  explicit SqliteStore(std::string path) : path_(std::move(path)) {}
  ~SqliteStore() override {
    for (auto& [sql, st] : stmts_) sqlite3_finalize(st);
    if (db_) sqlite3_close(db_);
  }

  Status Open() {
    int rc = sqlite3_open_v2(path_.c_str(), &db_,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             nullptr);
    if (rc != SQLITE_OK) return Err("open");
    sqlite3_busy_timeout(db_, 10000);
    // WAL lets `vault token create` and `vault backup` run beside a serving vault; FULL makes
    // each commit fsync the log, so an acknowledged write survives power loss, not only kill -9.
    DS_RETURN_IF_ERROR(Exec("PRAGMA journal_mode=WAL"));
    DS_RETURN_IF_ERROR(Exec("PRAGMA synchronous=FULL"));
    DS_RETURN_IF_ERROR(Exec("PRAGMA foreign_keys=ON"));
    DS_RETURN_IF_ERROR(QuickCheck());
    DS_RETURN_IF_ERROR(Exec(kSchema));
    // Databases made before tokens had a machine scope and an expiry: add the columns (an old
    // token is an operator token that never expires, as it was).
    std::lock_guard lock(mu_);
    sqlite3_stmt* probe = nullptr;
    if (sqlite3_prepare_v2(db_, "SELECT machine, expires FROM tokens LIMIT 0", -1, &probe, nullptr) ==
        SQLITE_OK) {
      sqlite3_finalize(probe);
      return Status::Ok();
    }
    sqlite3_finalize(probe);
    DS_RETURN_IF_ERROR(ExecLocked("ALTER TABLE tokens ADD COLUMN machine TEXT NOT NULL DEFAULT ''"));
    return ExecLocked("ALTER TABLE tokens ADD COLUMN expires INTEGER NOT NULL DEFAULT 0");
  }

  // SQLite's quick_check (the b-trees and their pages, not the index contents): seconds per GiB,
  // and the vault's database is small. A damaged file is refused here, before it serves.
  Status QuickCheck() {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, "PRAGMA quick_check", -1, &st, nullptr) != SQLITE_OK)
      return Corrupt(path_ + ": the vault database cannot be checked (" + sqlite3_errmsg(db_) +
                     "); restore it from a backup with `diskseal vault restore`");
    std::string first;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
      if (first.empty()) first = ColText(st, 0);
    std::string err = rc == SQLITE_DONE ? "" : sqlite3_errmsg(db_);
    sqlite3_finalize(st);
    if (!err.empty() || first != "ok")
      return Corrupt(path_ + ": the vault database failed its integrity check (" +
                     (err.empty() ? first.substr(0, 200) : err) +
                     "); restore it from a backup with `diskseal vault restore`");
    return Status::Ok();
  }

  Status AddVersion(const ObjectVersion& v, const std::string& owner) override {
    std::lock_guard lock(mu_);
    DS_RETURN_IF_ERROR(ExecLocked("BEGIN IMMEDIATE"));
    Status s = [&]() -> Status {
      DS_ASSIGN_OR_RETURN(auto current, OwnerLocked(v.kind, v.name));
      if (current && !owner.empty() && *current != owner)
        return PermissionDenied(std::string(KindName(v.kind)) + "/" + v.name + " belongs to " +
                                (current->empty() ? "the operators" : "another machine") +
                                ", not to machine '" + owner + "'");
      DS_ASSIGN_OR_RETURN(bool deleted, IsDeletedLocked(v.kind, v.name));
      if (deleted)
        return Busy(std::string(KindName(v.kind)) + "/" + v.name +
                    " is deleted but recoverable; recover or purge it first");
      if (!current) {
        sqlite3_stmt* o = Stmt("INSERT INTO owners(kind, name, machine) VALUES(?1, ?2, ?3)");
        if (!o) return Err("prepare owner");
        sqlite3_bind_int(o, 1, int(v.kind));
        BindText(o, 2, v.name);
        BindText(o, 3, owner);
        int orc = sqlite3_step(o);
        sqlite3_reset(o);
        if (orc != SQLITE_DONE) return Err("record owner");
      }
      sqlite3_stmt* st = Stmt(std::string("INSERT INTO versions(") + kVersionCols +
                              ") VALUES(?1, ?2, ?3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM "
                              "versions WHERE kind = ?1 AND name = ?2), ?4, ?5, ?6, ?7, ?8, ?9, "
                              "?10, ?11, ?12)");
      if (!st) return Err("prepare insert");
      sqlite3_bind_int(st, 1, int(v.kind));
      BindText(st, 2, v.name);
      BindText(st, 3, v.version);
      sqlite3_bind_blob(st, 4, v.sealed.data(), int(v.sealed.size()), SQLITE_TRANSIENT);
      BindText(st, 5, v.content_type);
      BindText(st, 6, v.tags_json);
      BindText(st, 7, v.meta_json);
      sqlite3_bind_int(st, 8, v.enabled ? 1 : 0);
      BindOpt(st, 9, v.nbf);
      BindOpt(st, 10, v.exp);
      sqlite3_bind_int64(st, 11, v.created);
      sqlite3_bind_int64(st, 12, v.updated);
      int rc = sqlite3_step(st);
      sqlite3_reset(st);
      if (rc == SQLITE_CONSTRAINT) return Busy("version " + v.version + " already exists");
      if (rc != SQLITE_DONE) return Err("insert version");
      return Status::Ok();
    }();
    return Finish(s);
  }

  Result<ObjectVersion> Get(Kind kind, const std::string& name, const std::string& version,
                            bool include_deleted) override {
    std::lock_guard lock(mu_);
    std::string sql = std::string("SELECT ") + kVersionCols +
                      " FROM versions v WHERE kind = ?1 AND name = ?2" +
                      (include_deleted ? "" : std::string(" AND ") + kNotDeleted) +
                      (version.empty() ? " ORDER BY seq DESC LIMIT 1" : " AND version = ?3");
    sqlite3_stmt* st = Stmt(sql);
    if (!st) return Err("prepare get");
    sqlite3_bind_int(st, 1, int(kind));
    BindText(st, 2, name);
    if (!version.empty()) BindText(st, 3, version);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      ObjectVersion v = ReadVersion(st);
      sqlite3_reset(st);
      return v;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("get version");
    return NotFound(std::string(KindName(kind)) + "/" + name + (version.empty() ? "" : "/" + version) +
                    " not found");
  }

  Result<std::vector<ObjectVersion>> ListVersions(Kind kind, const std::string& name, size_t skip,
                                                  size_t max) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt(std::string("SELECT ") + kVersionCols +
                            " FROM versions v WHERE kind = ?1 AND name = ?2 AND " + kNotDeleted +
                            " ORDER BY seq DESC LIMIT ?3 OFFSET ?4");
    if (!st) return Err("prepare list");
    sqlite3_bind_int(st, 1, int(kind));
    BindText(st, 2, name);
    sqlite3_bind_int64(st, 3, int64_t(max));
    sqlite3_bind_int64(st, 4, int64_t(skip));
    return ReadAll(st);
  }

  Result<std::vector<ObjectVersion>> ListNames(Kind kind, size_t skip, size_t max) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt(std::string("SELECT ") + kVersionCols +
                            " FROM versions v WHERE kind = ?1 AND " + kNotDeleted +
                            " AND seq = (SELECT MAX(seq) FROM versions w WHERE w.kind = v.kind AND "
                            "w.name = v.name) ORDER BY name LIMIT ?2 OFFSET ?3");
    if (!st) return Err("prepare list names");
    sqlite3_bind_int(st, 1, int(kind));
    sqlite3_bind_int64(st, 2, int64_t(max));
    sqlite3_bind_int64(st, 3, int64_t(skip));
    return ReadAll(st);
  }

  Status UpdateVersion(const ObjectVersion& v) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt(
        "UPDATE versions SET content_type = ?4, tags = ?5, enabled = ?6, nbf = ?7, exp = ?8, "
        "updated = ?9 WHERE kind = ?1 AND name = ?2 AND version = ?3");
    if (!st) return Err("prepare update");
    sqlite3_bind_int(st, 1, int(v.kind));
    BindText(st, 2, v.name);
    BindText(st, 3, v.version);
    BindText(st, 4, v.content_type);
    BindText(st, 5, v.tags_json);
    sqlite3_bind_int(st, 6, v.enabled ? 1 : 0);
    BindOpt(st, 7, v.nbf);
    BindOpt(st, 8, v.exp);
    sqlite3_bind_int64(st, 9, v.updated);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("update version");
    if (sqlite3_changes(db_) == 0) return NotFound(v.name + "/" + v.version + " not found");
    return Status::Ok();
  }

  Result<DeletedName> SoftDelete(Kind kind, const std::string& name, int64_t now,
                                 int64_t purge_after) override {
    std::lock_guard lock(mu_);
    DS_RETURN_IF_ERROR(ExecLocked("BEGIN IMMEDIATE"));
    DeletedName d{name, now, now + purge_after};
    Status s = [&]() -> Status {
      DS_ASSIGN_OR_RETURN(bool deleted, IsDeletedLocked(kind, name));
      DS_ASSIGN_OR_RETURN(bool exists, ExistsLocked(kind, name));
      if (deleted || !exists) return NotFound(std::string(KindName(kind)) + "/" + name + " not found");
      sqlite3_stmt* st = Stmt("INSERT INTO deleted(kind, name, deleted_date, purge_date) VALUES(?1, ?2, ?3, ?4)");
      if (!st) return Err("prepare delete");
      sqlite3_bind_int(st, 1, int(kind));
      BindText(st, 2, name);
      sqlite3_bind_int64(st, 3, d.deleted_date);
      sqlite3_bind_int64(st, 4, d.scheduled_purge_date);
      int rc = sqlite3_step(st);
      sqlite3_reset(st);
      return rc == SQLITE_DONE ? Status::Ok() : Err("soft delete");
    }();
    DS_RETURN_IF_ERROR(Finish(s));
    return d;
  }

  Result<std::vector<DeletedName>> ListDeleted(Kind kind, size_t skip, size_t max) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt("SELECT name, deleted_date, purge_date FROM deleted WHERE kind = ?1 "
                            "ORDER BY name LIMIT ?2 OFFSET ?3");
    if (!st) return Err("prepare list deleted");
    sqlite3_bind_int(st, 1, int(kind));
    sqlite3_bind_int64(st, 2, int64_t(max));
    sqlite3_bind_int64(st, 3, int64_t(skip));
    std::vector<DeletedName> out;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
      out.push_back({ColText(st, 0), sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2)});
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("list deleted");
    return out;
  }

  Result<DeletedName> GetDeleted(Kind kind, const std::string& name) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st =
        Stmt("SELECT name, deleted_date, purge_date FROM deleted WHERE kind = ?1 AND name = ?2");
    if (!st) return Err("prepare get deleted");
    sqlite3_bind_int(st, 1, int(kind));
    BindText(st, 2, name);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      DeletedName d{ColText(st, 0), sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2)};
      sqlite3_reset(st);
      return d;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("get deleted");
    return NotFound("deleted " + std::string(KindName(kind)) + "/" + name + " not found");
  }

  Status Recover(Kind kind, const std::string& name) override {
    return DeleteRows(kind, name, false);
  }
  Status Purge(Kind kind, const std::string& name) override { return DeleteRows(kind, name, true); }

  Result<std::optional<std::string>> GetOwner(Kind kind, const std::string& name) override {
    std::lock_guard lock(mu_);
    return OwnerLocked(kind, name);
  }

  Status AddToken(const TokenRecord& t) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt(
        "INSERT INTO tokens(name, hash, perms, created, revoked, machine, expires) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!st) return Err("prepare add token");
    BindText(st, 1, t.name);
    BindText(st, 2, t.hash_hex);
    BindText(st, 3, nlohmann::json(t.perms).dump());
    sqlite3_bind_int64(st, 4, t.created);
    sqlite3_bind_int(st, 5, t.revoked ? 1 : 0);
    BindText(st, 6, t.machine);
    sqlite3_bind_int64(st, 7, t.expires);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_CONSTRAINT) return Busy("token '" + t.name + "' already exists");
    return rc == SQLITE_DONE ? Status::Ok() : Err("add token");
  }

  Result<TokenRecord> FindTokenByHash(const std::string& hash_hex) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt("SELECT name, hash, perms, created, revoked, machine, expires FROM tokens WHERE hash = ?1");
    if (!st) return Err("prepare find token");
    BindText(st, 1, hash_hex);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      TokenRecord t = ReadToken(st);
      sqlite3_reset(st);
      return t;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("find token");
    return NotFound("unknown token");
  }

  Status RevokeToken(const std::string& name) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt("UPDATE tokens SET revoked = 1 WHERE name = ?1");
    if (!st) return Err("prepare revoke");
    BindText(st, 1, name);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("revoke token");
    if (sqlite3_changes(db_) == 0) return NotFound("token '" + name + "' does not exist");
    return Status::Ok();
  }

  Result<std::vector<TokenRecord>> ListTokens() override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt("SELECT name, hash, perms, created, revoked, machine, expires FROM tokens ORDER BY name");
    if (!st) return Err("prepare list tokens");
    std::vector<TokenRecord> out;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) out.push_back(ReadToken(st));
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("list tokens");
    return out;
  }

  Result<Bytes> GetMeta(const std::string& key) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt("SELECT v FROM meta WHERE k = ?1");
    if (!st) return Err("prepare get meta");
    BindText(st, 1, key);
    int rc = sqlite3_step(st);
    Bytes out;
    if (rc == SQLITE_ROW) {
      auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(st, 0));
      out.assign(p, p + sqlite3_column_bytes(st, 0));
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE) return NotFound("meta " + key + " not found");
    if (rc != SQLITE_ROW) return Err("get meta");
    return out;
  }

  Status PutMeta(const std::string& key, std::span<const uint8_t> value) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt("INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)");
    if (!st) return Err("prepare put meta");
    BindText(st, 1, key);
    sqlite3_bind_blob(st, 2, value.data(), int(value.size()), SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? Status::Ok() : Err("put meta");
  }

  Result<Bytes> ClaimMeta(const std::string& key, std::span<const uint8_t> value) override {
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = Stmt("INSERT OR IGNORE INTO meta(k, v) VALUES(?1, ?2)");
    if (!st) return Err("prepare claim meta");
    BindText(st, 1, key);
    sqlite3_bind_blob(st, 2, value.data(), int(value.size()), SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("claim meta");
    st = Stmt("SELECT v FROM meta WHERE k = ?1");
    if (!st) return Err("prepare get meta");
    BindText(st, 1, key);
    rc = sqlite3_step(st);
    Bytes out;
    if (rc == SQLITE_ROW) {
      auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(st, 0));
      out.assign(p, p + sqlite3_column_bytes(st, 0));
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW) return Err("claim meta");
    return out;
  }

  Status Backup(const std::string& path) override {
    // VACUUM INTO writes a consistent snapshot to a new file; write it beside the target and
    // rename so a crash never leaves a half backup under the final name. The file is made 0600
    // before SQLite writes into it (VACUUM INTO accepts an empty file): the backup holds the
    // token hashes and sealed values, whatever the caller's umask.
    std::string tmp = path + ".partial";
    std::remove(tmp.c_str());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return PosixError(tmp, errno);
    ::fchmod(fd, 0600);
    ::close(fd);
    std::lock_guard lock(mu_);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, "VACUUM INTO ?1", -1, &st, nullptr) != SQLITE_OK)
      return Err("prepare backup");
    BindText(st, 1, tmp);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
      std::remove(tmp.c_str());
      return Err("backup to " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) return PosixError(path, errno);
    return Status::Ok();
  }

 private:
  Status Err(const std::string& what) const {
    return IOError(path_ + ": " + what + ": " + (db_ ? sqlite3_errmsg(db_) : "cannot open"));
  }
  Status Exec(const char* sql) {
    std::lock_guard lock(mu_);
    return ExecLocked(sql);
  }
  Status ExecLocked(const char* sql) {
    char* msg = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
      std::string m = msg ? msg : "?";
      sqlite3_free(msg);
      return IOError(path_ + ": " + m);
    }
    return Status::Ok();
  }
  // Ends the transaction BEGIN opened: COMMIT when `s` is ok, else ROLLBACK and return `s`.
  Status Finish(const Status& s) {
    if (!s.ok()) {
      (void)ExecLocked("ROLLBACK");
      return s;
    }
    Status c = ExecLocked("COMMIT");
    if (!c.ok()) (void)ExecLocked("ROLLBACK");
    return c;
  }
  // Prepared once, reused (reset after every use). Called with mu_ held.
  sqlite3_stmt* Stmt(const std::string& sql) {
    auto it = stmts_.find(sql);
    if (it != stmts_.end()) {
      sqlite3_clear_bindings(it->second);
      return it->second;
    }
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) return nullptr;
    stmts_[sql] = st;
    return st;
  }
  static void BindText(sqlite3_stmt* st, int i, const std::string& s) {
    sqlite3_bind_text(st, i, s.data(), int(s.size()), SQLITE_TRANSIENT);
  }
  static void BindOpt(sqlite3_stmt* st, int i, const std::optional<int64_t>& v) {
    if (v) sqlite3_bind_int64(st, i, *v);
    else sqlite3_bind_null(st, i);
  }
  static std::string ColText(sqlite3_stmt* st, int i) {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, i));
    return p ? std::string(p, size_t(sqlite3_column_bytes(st, i))) : std::string();
  }
  static std::optional<int64_t> ColOpt(sqlite3_stmt* st, int i) {
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_int64(st, i);
  }
  static ObjectVersion ReadVersion(sqlite3_stmt* st) {
    ObjectVersion v;
    v.kind = Kind(sqlite3_column_int(st, 0));
    v.name = ColText(st, 1);
    v.version = ColText(st, 2);
    v.seq = sqlite3_column_int64(st, 3);
    auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(st, 4));
    v.sealed.assign(p, p + sqlite3_column_bytes(st, 4));
    v.content_type = ColText(st, 5);
    v.tags_json = ColText(st, 6);
    v.meta_json = ColText(st, 7);
    v.enabled = sqlite3_column_int(st, 8) != 0;
    v.nbf = ColOpt(st, 9);
    v.exp = ColOpt(st, 10);
    v.created = sqlite3_column_int64(st, 11);
    v.updated = sqlite3_column_int64(st, 12);
    return v;
  }
  static TokenRecord ReadToken(sqlite3_stmt* st) {
    TokenRecord t;
    t.name = ColText(st, 0);
    t.hash_hex = ColText(st, 1);
    auto perms = nlohmann::json::parse(ColText(st, 2), nullptr, false);
    if (perms.is_array())
      for (auto& p : perms)
        if (p.is_string()) t.perms.push_back(p.get<std::string>());
    t.created = sqlite3_column_int64(st, 3);
    t.revoked = sqlite3_column_int(st, 4) != 0;
    t.machine = ColText(st, 5);
    t.expires = sqlite3_column_int64(st, 6);
    return t;
  }
  Result<std::vector<ObjectVersion>> ReadAll(sqlite3_stmt* st) {
    std::vector<ObjectVersion> out;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) out.push_back(ReadVersion(st));
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return Err("list versions");
    return out;
  }
  Result<bool> IsDeletedLocked(Kind kind, const std::string& name) {
    sqlite3_stmt* st = Stmt("SELECT 1 FROM deleted WHERE kind = ?1 AND name = ?2");
    if (!st) return Err("prepare deleted check");
    sqlite3_bind_int(st, 1, int(kind));
    BindText(st, 2, name);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return Err("deleted check");
    return rc == SQLITE_ROW;
  }
  // The owner row; for a name made before owners were recorded, "" (the operators).
  Result<std::optional<std::string>> OwnerLocked(Kind kind, const std::string& name) {
    sqlite3_stmt* st = Stmt("SELECT machine FROM owners WHERE kind = ?1 AND name = ?2");
    if (!st) return Err("prepare owner");
    sqlite3_bind_int(st, 1, int(kind));
    BindText(st, 2, name);
    int rc = sqlite3_step(st);
    std::optional<std::string> out;
    if (rc == SQLITE_ROW) out = ColText(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return Err("owner");
    if (out) return out;
    DS_ASSIGN_OR_RETURN(bool exists, ExistsLocked(kind, name));
    if (exists) return std::optional<std::string>(std::string());
    return std::optional<std::string>();
  }
  Result<bool> ExistsLocked(Kind kind, const std::string& name) {
    sqlite3_stmt* st = Stmt("SELECT 1 FROM versions WHERE kind = ?1 AND name = ?2 LIMIT 1");
    if (!st) return Err("prepare exists");
    sqlite3_bind_int(st, 1, int(kind));
    BindText(st, 2, name);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return Err("exists");
    return rc == SQLITE_ROW;
  }
  Status DeleteRows(Kind kind, const std::string& name, bool purge) {
    std::lock_guard lock(mu_);
    DS_RETURN_IF_ERROR(ExecLocked("BEGIN IMMEDIATE"));
    Status s = [&]() -> Status {
      DS_ASSIGN_OR_RETURN(bool deleted, IsDeletedLocked(kind, name));
      if (!deleted) return NotFound("deleted " + std::string(KindName(kind)) + "/" + name + " not found");
      std::vector<const char*> sqls{"DELETE FROM deleted WHERE kind = ?1 AND name = ?2"};
      if (purge) {
        sqls.push_back("DELETE FROM versions WHERE kind = ?1 AND name = ?2");
        sqls.push_back("DELETE FROM owners WHERE kind = ?1 AND name = ?2");  // the name is free
      }
      for (const char* sql : sqls) {
        sqlite3_stmt* st = Stmt(sql);
        if (!st) return Err("prepare purge");
        sqlite3_bind_int(st, 1, int(kind));
        BindText(st, 2, name);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) return Err(purge ? "purge" : "recover");
      }
      return Status::Ok();
    }();
    return Finish(s);
  }

  std::string path_;
  sqlite3* db_ = nullptr;
  std::mutex mu_;
  std::map<std::string, sqlite3_stmt*> stmts_;
};

}  // namespace

Result<std::unique_ptr<VaultStore>> OpenSqliteStore(const std::string& path) {
  auto s = std::make_unique<SqliteStore>(path);
  DS_RETURN_IF_ERROR(s->Open());
  return std::unique_ptr<VaultStore>(std::move(s));
}

}  // namespace ds::vault
