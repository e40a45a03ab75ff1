#!/usr/bin/env node
// verify-commit.mjs — proves that a PDS signs an account's repo with the key its DID document publishes: fetches
// the repo's latest commit (com.atproto.sync.getRepo, a CAR whose root is the signed commit) and checks the commit
// signature against DID_KEY; with PLC_URL it also decodes the signing key of the DID document ({PLC}/{did}, which
// may use the legacy uncompressed multibase form) and compares it with DID_KEY. Used by scripts/smoke-opt-in.sh.
//
//   REFSTACK_HOME=$(scripts/refstack.sh home) node verify-commit.mjs <PDS_URL> <DID> <did:key:z...> [PLC_URL]
//
// Prints one JSON line {"ok","sig_ok","doc_key","doc_key_ok","did","rev","commit"} and exits 0 only when every
// check passed. Uses @atproto/repo and @atproto/identity of the refstack install (REFSTACK_HOME); read-only, talks
// to nothing but the given PDS and PLC.
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [pdsUrl, did, didKey, plcUrl] = process.argv.slice(2)
if (!pdsUrl || !did || !didKey?.startsWith('did:key:z')) {
  console.error('usage: verify-commit.mjs <PDS_URL> <DID> <did:key:z...>')
  process.exit(2)
}
const home = process.env.REFSTACK_HOME
if (!home) {
  console.error('REFSTACK_HOME is not set (scripts/refstack.sh home)')
  process.exit(2)
}
const load = (pkg) => import(pathToFileURL(path.join(home, 'node_modules', pkg, 'dist/index.js')).href)
const repo = await load('@atproto/repo')

let docKey = null
if (plcUrl) {
  const { getKey } = await load('@atproto/identity')
  const r = await fetch(`${plcUrl.replace(/\/$/, '')}/${did}`)
  docKey = r.ok ? (getKey(await r.json()) ?? null) : null
}
const docKeyOk = plcUrl ? docKey === didKey : null

const url = `${pdsUrl.replace(/\/$/, '')}/xrpc/com.atproto.sync.getRepo?did=${encodeURIComponent(did)}`
const res = await fetch(url)
if (!res.ok) {
  const error = `getRepo HTTP ${res.status}: ${await res.text()}`
  console.log(JSON.stringify({ ok: false, sig_ok: false, doc_key: docKey, doc_key_ok: docKeyOk, did, error }))
  process.exit(1)
}
const car = new Uint8Array(await res.arrayBuffer())
const { root, blocks } = await repo.readCarWithRoot(car)
const bytes = blocks.get(root)
if (!bytes) {
  const error = 'commit block missing from the CAR'
  console.log(JSON.stringify({ ok: false, sig_ok: false, doc_key: docKey, doc_key_ok: docKeyOk, did, error }))
  process.exit(1)
}
const commit = repo.cborToLexRecord(bytes)
const sigOk = commit.did === did && (await repo.verifyCommitSig(commit, didKey))
const ok = sigOk && docKeyOk !== false
const out = { ok, sig_ok: sigOk, doc_key: docKey, doc_key_ok: docKeyOk, did: commit.did, rev: commit.rev }
console.log(JSON.stringify({ ...out, commit: root.toString() }))
process.exit(ok ? 0 : 1)
