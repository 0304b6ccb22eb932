// Microsoft's current Key Vault SDKs (npm @azure/keyvault-secrets and @azure/keyvault-keys, the
// versions pinned in scripts/azure-sdk) at their default api-version against the real vault on
// loopback: the basic secret and key calls must all pass. The SDKs come from the cache
// scripts/setup fills (build/azure-sdk); when it is empty this test installs them, and when that
// cannot run (no node, npm or registry) it fails saying so -- it never skips.
#include <gtest/gtest.h>

#include "testlib.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

TEST(VaultSdk, CurrentAzureSdksPassAtTheirDefaultApiVersion) {
  ASSERT_TRUE(HaveProgram("node")) << "the Azure SDK test needs node >= 18 (and npm once to fill "
                                      "the cache): install them, then run scripts/azure-sdk";
  RunResult sdk = RunProgram({std::string(DISKSEAL_SOURCE_DIR) + "/scripts/azure-sdk"});
  ASSERT_EQ(sdk.exit_code, 0) << "cannot install the Azure SDKs into build/azure-sdk "
                                 "(scripts/azure-sdk; npm registry reachable?): "
                              << sdk.err;
  std::string sdk_dir = sdk.out.substr(0, sdk.out.find('\n'));
  ASSERT_FALSE(sdk_dir.empty());

  TempDir tmp;
  VaultProcess vault(tmp / "vault");
  vault.Start();
  std::string token = vault.Token("sdk", "all");
  RunResult r = RunProgram({"env", "NODE_PATH=" + sdk_dir + "/node_modules",
                            "NODE_EXTRA_CA_CERTS=" + vault.ca(), "VAULT_URL=" + vault.url(),
                            "VAULT_TOKEN_FILE=" + token, "node",
                            std::string(DISKSEAL_SOURCE_DIR) + "/tests/azure_sdk/basic_calls.cjs"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  size_t ok = 0;
  for (size_t p = 0; (p = r.out.find("ok ", p)) != std::string::npos; ++p)
    if (p == 0 || r.out[p - 1] == '\n') ++ok;
  EXPECT_EQ(ok, 16u) << r.out;
  EXPECT_EQ(r.out.find("FAIL"), std::string::npos) << r.out;
  // The SDKs' own defaults, not a pinned older version: secrets 4.12 sends 2026-04-01, keys 4.10
  // sends 2025-07-01.
  EXPECT_NE(r.out.find("api-versions: 2025-07-01,2026-04-01"), std::string::npos) << r.out;
  EXPECT_TRUE(vault.Alive());
}

}  // namespace
}  // namespace ds::test
