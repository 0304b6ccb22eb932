// `diskseal vault ...`: run the embedded key vault (serve), administer it on its host (token,
// backup, restore: direct access to the data directory is the authority), and talk to any vault
// speaking the Key Vault API from scripts (secret get|set|list, key create|wrap|unwrap).
#include <pthread.h>
#include <sys/stat.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <ostream>
#include <thread>

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>

#include "cli/commands.h"
#include "cli/vault_options.h"
#include "vault/server.h"
#include "vault/vault_dir.h"

namespace ds::cli {

namespace {

using json = nlohmann::ordered_json;

// All of stdin (at most `max` bytes) into locked memory; one trailing newline is dropped so
// `echo value | diskseal vault secret set` stores "value".
Result<SecureBuffer> ReadStdin(size_t max) {
  SecureBuffer buf(max + 1);
  size_t n = 0;
  for (;;) {
    ssize_t k = ::read(0, buf.data() + n, buf.size() - n);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return PosixError("reading stdin", errno);
    if (k == 0) break;
    n += size_t(k);
    if (n > max) return InvalidArgument("stdin holds more than " + std::to_string(max) + " bytes");
  }
  if (n > 0 && buf.data()[n - 1] == '\n') --n;
  buf.Truncate(n);
  return buf;
}

Runner SetupVaultServe(CLI::App& app, Globals& g) {
  auto o = std::make_shared<vault::ServerOptions>();
  app.add_option("--dir", o->dir, "data directory (database, master key, TLS files, audit log)")->required();
  app.add_option("--listen", o->listen, "address:port to listen on; port 0 picks a free port")
      ->capture_default_str();
  app.add_option("--port-file", o->port_file, "write the port here once listening (for scripts)");
  app.add_option("--cert", o->cert_file, "server certificate chain (PEM); default: generated in --dir");
  app.add_option("--key", o->key_file, "server private key (PEM)");
  app.add_option("--hostname", o->hostnames, "extra DNS name or IP for a generated certificate");
  app.add_option("--master-key", o->master_key_file, "master key file (default <dir>/master.key, 0600)");
  app.add_option("--threads", o->threads, "worker threads running vault calls (connections need none)")
      ->capture_default_str();
  app.add_option("--max-connections", o->max_connections, "most open connections in all")
      ->capture_default_str();
  app.add_option("--max-client-connections", o->max_client_connections,
                 "most open connections from one client address")->capture_default_str();
  app.add_option("--request-timeout", o->request_timeout,
                 "seconds a TLS handshake or a request may take in all, however it trickles")
      ->capture_default_str();
  app.add_option("--idle-timeout", o->idle_timeout, "seconds a keep-alive connection may wait idle")
      ->capture_default_str();
  return [&g, o]() -> Status {
    // Signals are taken by one thread with sigwait: block them before any thread starts so every
    // worker inherits the mask and the handler never runs on a random thread.
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) sigaddset(&set, s);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    ::umask(077);  // database, WAL, audit log and keys: owner only
    o->handshake_timeout = o->request_timeout;
    DS_ASSIGN_OR_RETURN(auto srv, vault::VaultServer::Start(*g.env, *o, *g.out));
    std::atomic<bool> done{false};
    std::thread sig([&] {
      int signo = 0;
      sigwait(&set, &signo);
      // Stop() is a no-op until Run() has started listening: repeat until Run() returns.
      while (!done.load()) {
        srv->Stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
    Status s = srv->Run();
    done = true;
    pthread_kill(sig.native_handle(), SIGUSR1);
    sig.join();
    srv.reset();  // closes the listener, then the database (checkpointing the WAL)
    if (s.ok()) vault::EndServing(vault::VaultPaths(o->dir, o->master_key_file));  // a clean stop
    *g.out << "vault: stopped\n";
    return s;
  };
}

Runner SetupVaultToken(CLI::App& app, Globals& g) {
  app.require_subcommand(1);
  struct Opts {
    std::string dir, master_key, name, allow, out, machine, expires = "90d";
  };
  auto o = std::make_shared<Opts>();
  auto dir_opts = [o](CLI::App* a) {
    a->add_option("--dir", o->dir, "vault data directory")->required();
    a->add_option("--master-key", o->master_key, "master key file (default <dir>/master.key)");
  };
  CLI::App* create = app.add_subcommand("create", "make an access token (printed once)");
  dir_opts(create);
  create->add_option("--name", o->name, "token name (who, in the audit log)")->required();
  create->add_option("--allow", o->allow,
                     "permissions, comma-separated: all, secrets:get,set,list,delete,recover,purge, "
                     "keys:get,list,create,rotate,wrap,unwrap,delete,recover,purge")
      ->required();
  create->add_option("--out", o->out, "write the token to this file (0600) instead of stdout");
  create->add_option("--machine", o->machine,
                     "a host token: it reaches only the secrets and keys this machine created "
                     "(its secrets must carry the tag MachineName=NAME); without it, an operator "
                     "token that reaches every object");
  create->add_option("--expires", o->expires, "lifetime: 90d, 12h, 30m, 3600s or never")
      ->capture_default_str();
  CLI::App* revoke = app.add_subcommand("revoke", "revoke a token by name");
  dir_opts(revoke);
  revoke->add_option("--name", o->name, "token name")->required();
  CLI::App* list = app.add_subcommand("list", "list tokens (names and permissions, never tokens)");
  dir_opts(list);
  list->add_flag("--json", g.json, "print JSON");

  auto open = [&g, o]() { return vault::OpenVault(*g.env, vault::VaultPaths(o->dir, o->master_key), false); };
  return Dispatch({
      {create, [&g, o, open]() -> Status {
         DS_ASSIGN_OR_RETURN(auto perms, vault::ParsePermissions(o->allow));
         vault::TokenOptions topts;
         topts.machine = o->machine;
         DS_ASSIGN_OR_RETURN(topts.lifetime_seconds, vault::ParseLifetime(o->expires));
         if (!o->machine.empty() && !vault::ValidMachineName(o->machine))
           return InvalidArgument("--machine '" + o->machine + "' must be 1-64 of [A-Za-z0-9._-]");
         DS_ASSIGN_OR_RETURN(auto v, open());
         DS_ASSIGN_OR_RETURN(std::string token, vault::CreateToken(*v.store, o->name, perms, topts));
         Status s = Status::Ok();
         if (o->out.empty()) *g.out << token << "\n";
         else s = g.env->WriteFileAtomic(o->out, token + "\n", 0600);
         OPENSSL_cleanse(token.data(), token.size());
         return s;
       }},
      {revoke, [&g, o, open]() -> Status {
         DS_ASSIGN_OR_RETURN(auto v, open());
         return vault::RevokeToken(*g.env, vault::VaultPaths(o->dir, o->master_key), *v.store, o->name);
       }},
      {list, [&g, open]() -> Status {
         DS_ASSIGN_OR_RETURN(auto v, open());
         DS_ASSIGN_OR_RETURN(auto tokens, v.store->ListTokens());
         json arr = json::array();
         for (const auto& t : tokens)
           arr.push_back({{"name", t.name}, {"permissions", t.perms}, {"created", t.created},
                          {"revoked", t.revoked},
                          {"machine", t.machine.empty() ? json(nullptr) : json(t.machine)},
                          {"expires", t.expires ? json(t.expires) : json(nullptr)}});
         if (g.json) {
           *g.out << arr.dump(2) << "\n";
           return Status::Ok();
         }
         for (const auto& t : arr) {
           std::string perms;
           for (const auto& p : t["permissions"]) perms += (perms.empty() ? "" : ",") + p.get<std::string>();
           *g.out << t["name"].get<std::string>() << (t["revoked"].get<bool>() ? " (revoked) " : " ")
                  << perms
                  << (t["machine"].is_null() ? " operator" : " machine=" + t["machine"].get<std::string>())
                  << (t["expires"].is_null() ? " never-expires"
                                             : " expires=" + std::to_string(t["expires"].get<int64_t>()))
                  << "\n";
         }
         return Status::Ok();
       }},
  });
}

Runner SetupVaultBackup(CLI::App& app, Globals& g) {
  auto dir = std::make_shared<std::string>();
  auto mk = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  app.add_option("--dir", *dir, "vault data directory")->required();
  app.add_option("--master-key", *mk, "master key file (default <dir>/master.key)");
  app.add_option("--out", *out, "backup file to write (values stay sealed under the master key)")->required();
  return [&g, dir, mk, out]() -> Status {
    DS_ASSIGN_OR_RETURN(auto v, vault::OpenVault(*g.env, vault::VaultPaths(*dir, *mk), false));
    DS_RETURN_IF_ERROR(v.store->Backup(*out));
    *g.out << "vault: backup written to " << *out
           << " (restore needs the same master key; keep it apart from the backup)\n";
    return Status::Ok();
  };
}

Runner SetupVaultRestore(CLI::App& app, Globals& g) {
  auto dir = std::make_shared<std::string>();
  auto mk = std::make_shared<std::string>();
  auto from = std::make_shared<std::string>();
  app.add_option("--dir", *dir, "vault data directory (its server must be stopped)")->required();
  app.add_option("--master-key", *mk, "master key file (default <dir>/master.key)");
  app.add_option("--from", *from, "backup file made by `vault backup`")->required();
  return [&g, dir, mk, from]() -> Status {
    DS_ASSIGN_OR_RETURN(auto report, vault::RestoreVault(*g.env, vault::VaultPaths(*dir, *mk), *from));
    *g.out << "vault: restored " << *dir << " from " << *from << "\n";
    if (report.revocations_reapplied > 0)
      *g.out << "vault: re-applied " << report.revocations_reapplied
             << " token revocation(s) made after the backup was taken (from "
             << vault::VaultPaths(*dir, *mk).revoked_list() << ")\n";
    return Status::Ok();
  };
}

Runner SetupVaultSecret(CLI::App& app, Globals& g) {
  app.require_subcommand(1);
  struct Opts {
    VaultOptions v;
    std::string name, version, content_type;
    std::vector<std::string> tags;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* set = app.add_subcommand("set", "store stdin as a new version of secret NAME");
  CLI::App* get = app.add_subcommand("get", "print the value of secret NAME");
  CLI::App* list = app.add_subcommand("list", "list the versions of secret NAME");
  for (CLI::App* a : {set, get, list}) {
    AddVaultConnectionOptions(*a, o->v);
    a->add_option("name", o->name, "secret name")->required();
    a->add_flag("--json", g.json, "print JSON");
  }
  set->add_option("--content-type", o->content_type, "contentType of the secret");
  set->add_option("--tag", o->tags, "tag KEY=VALUE (repeatable)");
  get->add_option("--version", o->version, "a version (default: newest)");
  return Dispatch({
      {set, [&g, o]() -> Status {
         vault::Tags tags;
         for (const auto& t : o->tags) {
           size_t eq = t.find('=');
           if (eq == std::string::npos || eq == 0) return InvalidArgument("--tag '" + t + "': use KEY=VALUE");
           tags[t.substr(0, eq)] = t.substr(eq + 1);
         }
         DS_ASSIGN_OR_RETURN(SecureBuffer value, ReadStdin(25 * 1024));
         DS_ASSIGN_OR_RETURN(auto c, MakeVaultClient(*g.env, o->v));
         DS_ASSIGN_OR_RETURN(auto b, c->SetSecret(o->name, value.span(), o->content_type, tags));
         if (g.json) *g.out << json{{"id", b.id}, {"name", b.name}, {"version", b.version}}.dump() << "\n";
         else *g.out << b.id << "\n";
         return Status::Ok();
       }},
      {get, [&g, o]() -> Status {
         DS_ASSIGN_OR_RETURN(auto c, MakeVaultClient(*g.env, o->v));
         DS_ASSIGN_OR_RETURN(auto b, c->GetSecret(o->name, o->version));
         if (g.json) {
           json j = {{"id", b.id}, {"value", std::string(b.value.view())},
                     {"contentType", b.content_type}, {"tags", b.tags}};
           std::string s = j.dump();
           *g.out << s << "\n";
           OPENSSL_cleanse(s.data(), s.size());
           OPENSSL_cleanse(j["value"].get_ref<std::string&>().data(), b.value.size());
         } else {
           g.out->write(reinterpret_cast<const char*>(b.value.data()), std::streamsize(b.value.size()));
           *g.out << "\n";
         }
         return Status::Ok();
       }},
      {list, [&g, o]() -> Status {
         DS_ASSIGN_OR_RETURN(auto c, MakeVaultClient(*g.env, o->v));
         DS_ASSIGN_OR_RETURN(auto all, c->ListSecretVersions(o->name));
         json arr = json::array();
         for (const auto& b : all)
           arr.push_back({{"id", b.id}, {"version", b.version}, {"enabled", b.enabled},
                          {"created", b.created}, {"contentType", b.content_type}});
         if (g.json) *g.out << arr.dump(2) << "\n";
         else
           for (const auto& b : all) *g.out << b.version << (b.enabled ? "" : " (disabled)") << "\n";
         return Status::Ok();
       }},
  });
}

Runner SetupVaultKey(CLI::App& app, Globals& g) {
  app.require_subcommand(1);
  struct Opts {
    VaultOptions v;
    std::string name, version, kty = "RSA", alg = "RSA-OAEP";
    int size = 0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* create = app.add_subcommand("create", "create key NAME (RSA 2048/3072/4096 or oct 256)");
  CLI::App* wrap = app.add_subcommand("wrap", "wrap stdin with key NAME; prints base64url");
  CLI::App* unwrap = app.add_subcommand("unwrap", "unwrap base64 or base64url from stdin (as `secret get` prints it); prints the bytes");
  for (CLI::App* a : {create, wrap, unwrap}) {
    AddVaultConnectionOptions(*a, o->v);
    a->add_option("name", o->name, "key name")->required();
    a->add_flag("--json", g.json, "print JSON");
  }
  create->add_option("--kty", o->kty, "RSA or oct")->capture_default_str();
  create->add_option("--size", o->size, "key size in bits (default 2048 for RSA, 256 for oct)");
  for (CLI::App* a : {wrap, unwrap}) {
    a->add_option("--version", o->version, "key version (default: newest)");
    a->add_option("--alg", o->alg, "RSA-OAEP, RSA-OAEP-256 or A256KW")->capture_default_str();
  }
  return Dispatch({
      {create, [&g, o]() -> Status {
         DS_ASSIGN_OR_RETURN(auto c, MakeVaultClient(*g.env, o->v));
         int size = o->size ? o->size : (o->kty == "oct" ? 256 : 2048);
         DS_ASSIGN_OR_RETURN(auto k, c->CreateKey(o->name, o->kty, size));
         if (g.json) *g.out << json{{"kid", k.kid}, {"kty", k.kty}, {"version", k.version}}.dump() << "\n";
         else *g.out << k.kid << "\n";
         return Status::Ok();
       }},
      {wrap, [&g, o]() -> Status {
         DS_ASSIGN_OR_RETURN(SecureBuffer in, ReadStdin(4096));
         DS_ASSIGN_OR_RETURN(auto c, MakeVaultClient(*g.env, o->v));
         DS_ASSIGN_OR_RETURN(auto w, c->WrapKey(o->name, o->version, o->alg, in.span()));
         if (g.json) *g.out << json{{"kid", w.first}, {"value", Base64UrlEncode(w.second)}}.dump() << "\n";
         else *g.out << Base64UrlEncode(w.second) << "\n";
         return Status::Ok();
       }},
      {unwrap, [&g, o]() -> Status {
         DS_ASSIGN_OR_RETURN(SecureBuffer in, ReadStdin(8192));
         // What the vault returns, as is: `vault secret get` prints standard base64 with padding
         // and a newline (ADE's Wrapped BEK), `key wrap` base64url without; either is taken.
         std::string_view text = in.view();
         while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
         while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
         auto bytes = Base64UrlDecode(text);
         if (!bytes) bytes = Base64Decode(text);
         if (!bytes || bytes->empty())
           return InvalidArgument("vault key unwrap " + o->name + ": stdin is not base64 or base64url (" +
                                  std::to_string(text.size()) + " characters)");
         DS_ASSIGN_OR_RETURN(auto c, MakeVaultClient(*g.env, o->v));
         DS_ASSIGN_OR_RETURN(SecureBuffer plain, c->UnwrapKey(o->name, o->version, o->alg, *bytes));
         g.out->write(reinterpret_cast<const char*>(plain.data()), std::streamsize(plain.size()));
         return Status::Ok();
       }},
  });
}

}  // namespace

Runner SetupVault(CLI::App& app, Globals& g) {
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, Runner>> subs;
  struct Sub {
    const char* name;
    const char* summary;
    Runner (*setup)(CLI::App&, Globals&);
  };
  static const Sub kSubs[] = {
      {"serve", "run the key vault (HTTPS, Azure Key Vault API subset)", SetupVaultServe},
      {"token", "create, revoke or list access tokens (on the vault host)", SetupVaultToken},
      {"backup", "write a consistent copy of the vault database", SetupVaultBackup},
      {"restore", "replace the vault database with a backup (server stopped)", SetupVaultRestore},
      {"secret", "client: set, get or list secrets in a vault", SetupVaultSecret},
      {"key", "client: create keys, wrap and unwrap with them", SetupVaultKey},
  };
  for (const auto& s : kSubs) {
    CLI::App* sub = app.add_subcommand(s.name, s.summary);
    subs.emplace_back(sub, s.setup(*sub, g));
  }
  return Dispatch(std::move(subs));
}

}  // namespace ds::cli
