#!/usr/bin/env node
// media-server.mjs — a tiny static file server standing in for Divine's media CDN on the localnet.
//
// Serves the files of MEDIA_DIRS (colon-separated, first match wins; default scripts/localnet/media and
// .localnet/media next to this checkout) on MEDIA_HOST:MEDIA_PORT (default 127.0.0.1:8088), GET and HEAD only,
// with Content-Length, a Content-Type from the extension (video/mp4 for .mp4) and single byte ranges.
// GET /health answers "ok". Prints one JSON line {"event":"media-ready",...} once listening.
// Node builtins only (runs with the refstack's Node 22). Never serves anything outside MEDIA_DIRS.
import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const repo = path.resolve(here, '..', '..')
const dirs = (process.env.MEDIA_DIRS || `${path.join(here, 'media')}:${path.join(repo, '.localnet', 'media')}`)
  .split(':')
  .filter(Boolean)
  .map((d) => path.resolve(d))
const host = process.env.MEDIA_HOST || '127.0.0.1'
const port = parseInt(process.env.MEDIA_PORT || '8088', 10)

const TYPES = {
  '.mp4': 'video/mp4',
  '.m4v': 'video/mp4',
  '.webm': 'video/webm',
  '.mov': 'video/quicktime',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.vtt': 'text/vtt',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
}

function resolveFile(urlPath) {
  let rel
  try {
    rel = decodeURIComponent(urlPath.split('?')[0])
  } catch {
    return null
  }
  if (rel.includes('\0')) return null
  for (const dir of dirs) {
    const full = path.resolve(dir, '.' + path.posix.normalize('/' + rel))
    if (full !== dir && !full.startsWith(dir + path.sep)) continue
    try {
      const st = fs.statSync(full)
      if (st.isFile()) return { full, size: st.size }
    } catch {
      // try the next directory
    }
  }
  return null
}

const server = http.createServer((req, res) => {
  const started = Date.now()
  const done = (status) =>
    console.log(JSON.stringify({ event: 'request', method: req.method, url: req.url, status, ms: Date.now() - started }))
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Length': 0 })
    res.end()
    return done(405)
  }
  if (req.url === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 })
    res.end(req.method === 'HEAD' ? undefined : 'ok')
    return done(200)
  }
  const file = resolveFile(req.url || '/')
  if (!file) {
    const body = 'not found\n'
    res.writeHead(404, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) })
    res.end(req.method === 'HEAD' ? undefined : body)
    return done(404)
  }
  const type = TYPES[path.extname(file.full).toLowerCase()] || 'application/octet-stream'
  let start = 0
  let end = file.size - 1
  let status = 200
  const headers = { 'Content-Type': type, 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' }
  const range = req.headers.range && /^bytes=(\d*)-(\d*)$/.exec(req.headers.range)
  if (range && (range[1] !== '' || range[2] !== '')) {
    if (range[1] === '') {
      start = Math.max(0, file.size - parseInt(range[2], 10))
    } else {
      start = parseInt(range[1], 10)
      if (range[2] !== '') end = Math.min(end, parseInt(range[2], 10))
    }
    if (start > end || start >= file.size) {
      res.writeHead(416, { 'Content-Range': `bytes */${file.size}`, 'Content-Length': 0 })
      res.end()
      return done(416)
    }
    status = 206
    headers['Content-Range'] = `bytes ${start}-${end}/${file.size}`
  }
  headers['Content-Length'] = file.size === 0 ? 0 : end - start + 1
  res.writeHead(status, headers)
  if (req.method === 'HEAD' || file.size === 0) {
    res.end()
    return done(status)
  }
  const stream = fs.createReadStream(file.full, { start, end })
  stream.on('error', () => res.destroy())
  stream.on('end', () => done(status))
  stream.pipe(res)
})

server.on('error', (err) => {
  console.error(`media-server: cannot listen on ${host}:${port}: ${err.message}`)
  process.exit(1)
})
server.listen(port, host, () => {
  console.log(JSON.stringify({ event: 'media-ready', url: `http://${host}:${port}`, dirs, pid: process.pid }))
})
const stop = (sig) => {
  console.log(JSON.stringify({ event: 'media-stopping', signal: sig }))
  server.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
  server.closeAllConnections?.()
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
