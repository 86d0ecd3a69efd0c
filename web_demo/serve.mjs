#!/usr/bin/env node
// A tiny static server for the web demo (Node's http module, no dependencies).
//
//   node web_demo/serve.mjs BUNDLE_DIR [--port N]      (default port 8321; 0 = any free port)
//
// Serves web_demo/ at / and BUNDLE_DIR at /bundle/, on 127.0.0.1 only, with the cross-origin isolation headers
// (COOP same-origin + COEP require-corp) that multi-threaded WebAssembly needs. Paths that leave their root
// (.., encoded slashes, symlinks pointing outside) get 403.

import { createReadStream, promises as fs } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const DEMO_ROOT = path.dirname(fileURLToPath(import.meta.url));

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream',
  '.ort': 'application/octet-stream',
  '.data': 'application/octet-stream',
  '.bin': 'application/octet-stream',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
};

const COMMON_HEADERS = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
};

function send(res, status, text) {
  res.writeHead(status, { ...COMMON_HEADERS, 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(`${status} ${text}\n`);
}

/** The real path of `rel` inside `root`, or null when it would leave `root` (lexically or through a symlink). */
async function resolveInside(root, rel) {
  const target = path.resolve(root, '.' + path.sep + rel);
  if (target !== root && !target.startsWith(root + path.sep)) return null;
  let real;
  try {
    real = await fs.realpath(target);
  } catch {
    return undefined; // missing
  }
  if (real !== root && !real.startsWith(root + path.sep)) return null;
  return real;
}

/** Creates (does not start) the server. `bundleDir` may be null (then /bundle/ is 404). */
export async function createServer({ bundleDir = null, demoRoot = DEMO_ROOT, log = false } = {}) {
  const roots = {
    demo: await fs.realpath(demoRoot),
    bundle: bundleDir ? await fs.realpath(bundleDir) : null,
  };
  return http.createServer(async (req, res) => {
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed');
      // Work on the raw request path: new URL() would silently resolve '..' segments before we could refuse them.
      const rawPath = String(req.url ?? '/').split(/[?#]/, 1)[0];
      if (!rawPath.startsWith('/')) return send(res, 400, 'bad path');
      let decoded;
      try {
        decoded = decodeURIComponent(rawPath);
      } catch {
        return send(res, 400, 'bad path');
      }
      if (decoded.includes('\0') || decoded.includes('\\')) return send(res, 400, 'bad path');
      if (decoded.split('/').includes('..')) return send(res, 403, 'path escapes its root');

      let root;
      let rel;
      if (decoded === '/bundle' || decoded.startsWith('/bundle/')) {
        if (!roots.bundle) return send(res, 404, 'no bundle folder given to serve.mjs');
        root = roots.bundle;
        rel = decoded.slice('/bundle'.length);
      } else {
        root = roots.demo;
        rel = decoded;
      }
      if (rel === '' || rel.endsWith('/')) rel += 'index.html';
      const file = await resolveInside(root, rel.replace(/^\/+/, ''));
      if (file === null) return send(res, 403, 'path escapes its root');
      if (file === undefined) return send(res, 404, 'not found');
      const stat = await fs.stat(file);
      if (!stat.isFile()) return send(res, 404, 'not a file');

      const type = MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
      res.writeHead(200, { ...COMMON_HEADERS, 'Content-Type': type, 'Content-Length': stat.size });
      if (log) console.log(`${req.method} ${decoded} 200 ${stat.size}`);
      if (req.method === 'HEAD') return res.end();
      createReadStream(file).on('error', () => res.destroy()).pipe(res);
    } catch (err) {
      if (!res.headersSent) send(res, 500, 'server error');
      else res.destroy();
      console.error(err);
    }
  });
}

/** Starts a server on 127.0.0.1:`port` (0 = a free port); resolves to {server, port, url}. */
export async function startServer({ bundleDir = null, port = 0, log = false } = {}) {
  const server = await createServer({ bundleDir, log });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const actual = server.address().port;
  return { server, port: actual, url: `http://127.0.0.1:${actual}/` };
}

async function cli(argv) {
  let port = 8321;
  let bundleDir = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--port') port = Number(argv[++i]);
    else if (arg.startsWith('--port=')) port = Number(arg.slice(7));
    else if (arg === '-h' || arg === '--help') {
      console.log('usage: node web_demo/serve.mjs BUNDLE_DIR [--port N]');
      return;
    } else if (bundleDir === null) bundleDir = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error('--port must be 0..65535');
  if (bundleDir === null) throw new Error('usage: node web_demo/serve.mjs BUNDLE_DIR [--port N]');
  const stat = await fs.stat(bundleDir).catch(() => null);
  if (!stat?.isDirectory()) throw new Error(`bundle folder not found: ${bundleDir}`);
  if (!(await fs.stat(path.join(bundleDir, 'manifest.json')).catch(() => null))) {
    throw new Error(`${bundleDir} has no manifest.json (make one with: cdx convert MODEL_DIR --target onnx -o ${bundleDir})`);
  }
  const { url } = await startServer({ bundleDir, port, log: true });
  console.log(`cdx web demo: ${url}?bundle=/bundle/   (bundle: ${path.resolve(bundleDir)}; Ctrl-C to stop)`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  cli(process.argv.slice(2)).catch((err) => {
    console.error(`serve.mjs: ${err.message}`);
    process.exit(2);
  });
}
