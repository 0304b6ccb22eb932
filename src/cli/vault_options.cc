#include "cli/vault_options.h"

#include "vault/escrow.h"
#include "engine/volume_escrow.h"
#include "luks2/volume.h"

namespace ds::cli {

std::string VaultOptions::SecretNameFor(const std::string& luks_uuid) const {
  return secret_name.empty() ? vault::DefaultSecretName(luks_uuid) : secret_name;
}

void AddVaultConnectionOptions(CLI::App& app, VaultOptions& o) {
  app.add_option("--vault", o.url, "key vault URL (https://host:port, or https://NAME.vault.azure.net)");
  app.add_option("--vault-token-file", o.token_file,
                 "file holding the vault bearer token (diskseal token or Entra ID access token)");
  app.add_option("--vault-token-env", o.token_env,
                 "name of an environment variable holding the vault bearer token");
  app.add_option("--vault-ca", o.ca_file, "PEM CA file to trust for the vault (default: system CAs)");
}

void AddVaultOptions(CLI::App& app, VaultOptions& o) {
  AddVaultConnectionOptions(app, o);
  app.add_option("--kek", o.kek, "vault key that wraps the escrowed passphrase (key-encryption key)");
  app.add_option("--kek-alg", o.kek_alg, "wrap algorithm: RSA-OAEP (default), RSA-OAEP-256, A256KW");
  app.add_option("--vault-secret-name", o.secret_name,
                 "vault secret holding the volume key (default: diskseal-<LUKS UUID>)");
}

Result<std::unique_ptr<vault::VaultClient>> MakeVaultClient(Env& env, const VaultOptions& o) {
  if (o.url.empty()) return InvalidArgument("--vault URL is required");
  if (o.token_file.empty() == o.token_env.empty())
    return InvalidArgument("--vault needs exactly one of --vault-token-file or --vault-token-env");
  vault::VaultClientOptions c;
  c.url = o.url;
  c.token_file = o.token_file;
  c.token_env = o.token_env;
  c.ca_file = o.ca_file;
  return vault::VaultClient::Create(env, c);
}

Result<SecureBuffer> ObtainPassphrase(Env& env, const KeySource& keys, const VaultOptions* vo,
                                      const luks2::Metadata& md, const std::string& device) {
  if (vo && vo->enabled() && keys.key_file.empty()) {
    DS_ASSIGN_OR_RETURN(auto client, MakeVaultClient(env, *vo));
    DS_ASSIGN_OR_RETURN(auto pin, engine::ReadEscrowPin(md));
    auto p = pin ? engine::FetchPinnedPassphrase(*client, *pin, md.uuid)
                 : vault::FetchEscrowedPassphrase(*client, vo->SecretNameFor(md.uuid));
    if (!p.ok()) return p.status().WithContext(device + ": fetching the escrowed passphrase");
    return std::move(p).value();
  }
  return ReadKey(env, keys, "Enter passphrase for " + device + ": ", false);
}

void AddVolumeUuidOption(CLI::App& app, std::string& uuid, const std::string& help_prefix) {
  app.add_option("--uuid", uuid,
                 help_prefix + "the volume's LUKS UUID (names its secrets: diskseal-<UUID>, diskseal-<UUID>-header)");
}

Result<std::string> HeaderSecretFor(const std::string& what, const VaultOptions& o, const std::string& uuid) {
  if (uuid.empty() == o.secret_name.empty())
    return InvalidArgument(what + " needs exactly one of --uuid UUID or --vault-secret-name NAME");
  if (!uuid.empty() && !luks2::IsValidUuid(uuid)) return InvalidArgument("--uuid " + uuid + " is not a UUID");
  return engine::HeaderSecretName(o.SecretNameFor(uuid));
}

}  // namespace ds::cli
