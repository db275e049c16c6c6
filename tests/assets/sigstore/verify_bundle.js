// Verify a key-based Sigstore bundle with sigstore-js (@sigstore/verify), independently of lockd:
//   node verify_bundle.js BUNDLE.json PUBLIC_KEY.pem
// The key is trusted under the bundle's publicKey.hint; no transparency log, certificate
// transparency or timestamp is required (thresholds 0: a key-based bundle carries none).
// Prints "verified" and exits 0, or prints the verifier's error and exits 1.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const { bundleFromJSON } = require("@sigstore/bundle");
const { TrustedRoot } = require("@sigstore/protobuf-specs");
const { Verifier, toSignedEntity, toTrustMaterial } = require("@sigstore/verify");

const [bundlePath, keyPath] = process.argv.slice(2);
try {
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, "utf8")));
  const hint = bundle.verificationMaterial.content.publicKey.hint;
  const der = crypto
    .createPublicKey(fs.readFileSync(keyPath, "utf8"))
    .export({ type: "spki", format: "der" });
  const key = {
    rawBytes: der,
    keyDetails: 5, // PKIX_ECDSA_P256_SHA_256
    validFor: { start: new Date(0) },
  };
  const root = TrustedRoot.fromJSON({
    mediaType: "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
    tlogs: [],
    certificateAuthorities: [],
    ctlogs: [],
    timestampAuthorities: [],
  });
  const verifier = new Verifier(toTrustMaterial(root, { [hint]: key }), {
    tlogThreshold: 0,
    ctlogThreshold: 0,
    timestampThreshold: 0,
  });
  verifier.verify(toSignedEntity(bundle));
  console.log("verified");
} catch (e) {
  console.log(`${e.name}: ${e.code || ""} ${e.message}`);
  process.exit(1);
}
