// The basic Key Vault calls through Microsoft's JavaScript SDKs, at their default api-version,
// against the diskseal vault. Run by tests/vault_sdk_test.cc with:
//   NODE_PATH=<sdk cache>/node_modules NODE_EXTRA_CA_CERTS=<vault>/ca.pem
//   VAULT_URL=https://127.0.0.1:PORT VAULT_TOKEN_FILE=<token file> node basic_calls.cjs
// Prints one line per call ("ok NAME" or "FAIL NAME: error"), then "api-versions: ..." (what the
// SDKs sent), and exits 1 if any call failed.
"use strict";
const fs = require("fs");
const { SecretClient } = require("@azure/keyvault-secrets");
const { KeyClient, CryptographyClient } = require("@azure/keyvault-keys");

const url = process.env.VAULT_URL;
const token = fs.readFileSync(process.env.VAULT_TOKEN_FILE, "utf8").trim();
// The vault's own bearer token, handed to the SDK's challenge-based authentication as an Entra ID
// token would be.
const credential = {
  async getToken() {
    return { token, expiresOnTimestamp: Date.now() + 3600 * 1000 };
  },
};
const seen = new Set();
const options = {
  // The challenge names the vault's own address as resource, not *.vault.azure.net.
  disableChallengeResourceVerification: true,
  additionalPolicies: [
    {
      position: "perCall",
      policy: {
        name: "recordApiVersion",
        sendRequest(request, next) {
          seen.add(new URL(request.url).searchParams.get("api-version"));
          return next(request);
        },
      },
    },
  ],
  retryOptions: { maxRetries: 0 },
};
const secrets = new SecretClient(url, credential, options);
const keys = new KeyClient(url, credential, options);
const poll = { intervalInMs: 50 };
let failed = 0;

async function step(name, fn) {
  try {
    await fn();
    console.log("ok " + name);
  } catch (e) {
    failed++;
    console.log("FAIL " + name + ": " + (e && (e.code || e.name)) + " " + (e && e.message));
  }
}
function expect(cond, what) {
  if (!cond) throw new Error("unexpected: " + what);
}

(async () => {
  const suffix = Date.now().toString(36);
  const name = "sdk-secret-" + suffix;
  let v1;
  await step("setSecret", async () => {
    const s = await secrets.setSecret(name, "value-1", { contentType: "BEK", tags: { MachineName: "sdk" } });
    expect(s.value === "value-1" && s.properties.version, "set reply");
    v1 = s.properties.version;
  });
  await step("setSecret (second version)", async () => {
    await secrets.setSecret(name, "value-2");
  });
  await step("getSecret (newest)", async () => {
    const s = await secrets.getSecret(name);
    expect(s.value === "value-2", "newest value");
  });
  await step("getSecret (version)", async () => {
    const s = await secrets.getSecret(name, { version: v1 });
    expect(s.value === "value-1" && s.properties.tags.MachineName === "sdk", "pinned version");
  });
  await step("updateSecretProperties", async () => {
    const p = await secrets.updateSecretProperties(name, v1, { enabled: false });
    expect(p.enabled === false, "disabled");
  });
  await step("listPropertiesOfSecretVersions", async () => {
    let n = 0;
    for await (const p of secrets.listPropertiesOfSecretVersions(name)) n += p.name === name ? 1 : 0;
    expect(n === 2, "two versions, saw " + n);
  });
  await step("listPropertiesOfSecrets", async () => {
    let found = false;
    for await (const p of secrets.listPropertiesOfSecrets()) found = found || p.name === name;
    expect(found, "the secret listed");
  });
  await step("beginDeleteSecret", async () => {
    const poller = await secrets.beginDeleteSecret(name, poll);
    await poller.pollUntilDone();
  });
  await step("getDeletedSecret", async () => {
    const d = await secrets.getDeletedSecret(name);
    expect(d.name === name, "deleted secret");
  });
  await step("beginRecoverDeletedSecret", async () => {
    const poller = await secrets.beginRecoverDeletedSecret(name, poll);
    await poller.pollUntilDone();
    const s = await secrets.getSecret(name);
    expect(s.value === "value-2", "recovered");
  });
  const keyName = "sdk-key-" + suffix;
  let key;
  await step("createRsaKey", async () => {
    key = await keys.createRsaKey(keyName, { keySize: 2048, keyOps: ["wrapKey", "unwrapKey"] });
    expect(key.key && key.key.kty === "RSA", "RSA key");
  });
  await step("getKey", async () => {
    const k = await keys.getKey(keyName);
    expect(k.id === key.id, "same kid");
  });
  await step("wrapKey/unwrapKey", async () => {
    const crypto = new CryptographyClient(key.id, credential, options);
    const plain = Buffer.from("a key to wrap, 32 bytes long....");
    const w = await crypto.wrapKey("RSA-OAEP", plain);
    const u = await crypto.unwrapKey("RSA-OAEP", w.result);
    expect(Buffer.from(u.result).equals(plain), "round trip");
  });
  await step("listPropertiesOfKeys", async () => {
    let found = false;
    for await (const p of keys.listPropertiesOfKeys()) found = found || p.name === keyName;
    expect(found, "the key listed");
  });
  await step("beginDeleteKey", async () => {
    const poller = await keys.beginDeleteKey(keyName, poll);
    await poller.pollUntilDone();
  });
  await step("purgeDeletedKey", async () => {
    await keys.purgeDeletedKey(keyName);
  });
  console.log("api-versions: " + [...seen].sort().join(","));
  process.exit(failed ? 1 : 0);
})().catch((e) => {
  console.log("FAIL script: " + e);
  process.exit(2);
});
