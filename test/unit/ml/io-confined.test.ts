/**
 * Model inputs are confined (issue 10.5): only local paths (a `file:` URL is one) and http(s);
 * a file that is not a model is never echoed; symbolic links do not lead out of the model's
 * folder; a download is capped in size and fails when it stalls.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SymbolicTensor } from '@tensorflow/tfjs-layers';
import { configureBackend, useLayers } from '../../../src/ml/backend.js';
import { loadModel, saveModel } from '../../../src/ml/io.js';
import { StageError } from '../../../src/runtime/errors.js';
import { loadBase } from '../../../src/stages/load-base.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

let dir: TestDir;
let server: http.Server;
let baseUrl: string;

async function rejection(promise: Promise<unknown>): Promise<StageError> {
  const error = await promise.then(() => null, (e: unknown) => e);
  expect(error).toBeInstanceOf(StageError);
  return error as StageError;
}

beforeAll(async () => {
  configureBackend('wasm');
  const tfl = await useLayers();
  const input = tfl.input({ shape: [2], name: 'x' });
  const model = tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 2, name: 'head' }).apply(input) as SymbolicTensor });
  dir = testdir({ 'secret.txt': 'root:x:0:0:SECRET-LINE\nmore\n' });
  await saveModel(model, dir.path('saved'));
  model.dispose();
  server = http.createServer((req, res) => {
    if (req.url === '/endless/model.json') {
      // An endless body: chunks as fast as the client takes them.
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      const pump = () => { while (res.write(chunk)); };
      res.on('drain', pump);
      pump();
    } else if (req.url === '/declared/model.json') {
      res.writeHead(200, { 'content-length': String(10 * 1024 * 1024) });
      res.write('{');
    } else if (req.url === '/stall/model.json') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"modelTopology":');
    } else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  dir.cleanup();
});

describe('model sources', () => {
  it('refuses a file that is not a model without echoing its content', async () => {
    for (const source of [pathToFileURL(dir.path('secret.txt')).href, dir.path('secret.txt')]) {
      const error = await rejection(loadModel(source));
      expect(error.code).toBe('model_bad_manifest');
      expect(error.message).toContain('not a TF.js model.json (invalid JSON at byte 0)');
      expect(error.message + JSON.stringify(error.details)).not.toMatch(/root|SECRET/);
    }
    dir.write('bad/model.json', '{"a": 1, oops SECRET}');
    const error = await rejection(loadModel(dir.path('bad')));
    expect(error.message).toContain('invalid JSON at byte 9');
    expect(error.message).not.toContain('SECRET');
  });

  it.skipIf(!existsSync('/etc/passwd'))('refuses file:///etc/passwd without quoting it', async () => {
    const error = await rejection(loadModel('file:///etc/passwd'));
    expect(error.message).toMatch(/not a TF\.js model\.json \(invalid JSON at byte \d+\)/);
    expect(error.message).not.toMatch(/root|:x:/);
  });

  it('loads a file: URL of a model folder or model.json like a path', async () => {
    for (const source of [pathToFileURL(dir.path('saved')).href, pathToFileURL(dir.path('saved/model.json')).href]) {
      const model = await loadModel(source);
      expect(model.layers.length).toBe(2);
      model.dispose();
    }
  });

  it('refuses schemes other than http(s) and file: at validation and at load', async () => {
    expect(loadBase.checkPaths!({ model: 'ftp://host/model.json', init: 'pretrained' }, dir.root)[0].message).toMatch(/neither a local path nor an http\(s\) URL/);
    expect(loadBase.checkPaths!({ model: 'data:application/json,{}', init: 'pretrained' }, dir.root)).toHaveLength(1);
    expect(loadBase.checkPaths!({ model: pathToFileURL(dir.path('missing')).href, init: 'pretrained' }, dir.root)[0].message).toMatch(/does not exist/);
    expect((await rejection(loadModel('data:application/json,{}'))).code).toBe('model_not_found');
    expect((await rejection(loadModel('file://otherhost/m/model.json'))).code).toBe('model_not_found');
  });
});

describe('symbolic links in a model folder', () => {
  it('refuses a weight file linked outside the folder', async () => {
    mkdirSync(dir.path('linked'));
    copyFileSync(dir.path('saved/model.json'), dir.path('linked/model.json'));
    symlinkSync(dir.path('saved/weights.bin'), dir.path('linked/weights.bin'));
    const error = await rejection(loadModel(dir.path('linked')));
    expect(error.code).toBe('model_bad_manifest');
    expect(error.message).toMatch(/symbolic link to .*outside the model's folder/);
  });

  it('refuses a linked folder on the way out', async () => {
    mkdirSync(dir.path('viafolder'));
    copyFileSync(dir.path('saved/model.json'), dir.path('viafolder/model.json'));
    symlinkSync(dir.path('saved'), dir.path('viafolder/sub'));
    dir.write('viafolder/model.json', readFileSync(dir.path('viafolder/model.json'), 'utf8').replace('"weights.bin"', '"sub/weights.bin"'));
    expect((await rejection(loadModel(dir.path('viafolder')))).message).toMatch(/outside the model's folder/);
  });

  it('accepts a link that stays inside the folder', async () => {
    mkdirSync(dir.path('inside/real'), { recursive: true });
    copyFileSync(dir.path('saved/model.json'), dir.path('inside/model.json'));
    copyFileSync(dir.path('saved/weights.bin'), dir.path('inside/real/w.bin'));
    symlinkSync('real/w.bin', dir.path('inside/weights.bin'));
    const model = await loadModel(dir.path('inside'));
    model.dispose();
  });
});

describe('downloads', () => {
  it('cuts an endless body off at the size cap, fast and in bounded memory', async () => {
    const rss = process.memoryUsage().rss;
    const started = Date.now();
    const error = await rejection(loadModel(`${baseUrl}/endless/model.json`, { maxDownloadBytes: 1024 * 1024 }));
    expect(error.code).toBe('model_too_large');
    expect(error.message).toMatch(/larger than the 1048576 byte limit/);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(process.memoryUsage().rss - rss).toBeLessThan(200 * 1024 * 1024);
  });

  it('takes the cap from PIPELINE_MAX_DOWNLOAD_BYTES and from max_download_mb', async () => {
    process.env.PIPELINE_MAX_DOWNLOAD_BYTES = String(512 * 1024);
    try {
      expect((await rejection(loadModel(`${baseUrl}/endless/model.json`))).message).toMatch(/524288 byte limit/);
    } finally {
      delete process.env.PIPELINE_MAX_DOWNLOAD_BYTES;
    }
    const ctx = { baseDir: dir.root, log: { debug() {}, info() {}, warn() {} }, signal: new AbortController().signal } as never;
    expect((await rejection(loadBase.run(ctx, { model: `${baseUrl}/endless/model.json`, init: 'pretrained', max_download_mb: 1 }))).code).toBe('model_too_large');
  });

  it('refuses a declared length over the cap before reading the body', async () => {
    const error = await rejection(loadModel(`${baseUrl}/declared/model.json`, { maxDownloadBytes: 1024 * 1024 }));
    expect(error.code).toBe('model_too_large');
  });

  it('fails a download that stalls, long before the total timeout', async () => {
    const started = Date.now();
    const error = await rejection(loadModel(`${baseUrl}/stall/model.json`, { idleTimeoutMs: 300 }));
    expect(error.code).toBe('model_fetch_failed');
    expect(error.message).toMatch(/stalled: no bytes for 0\.3s after 17 bytes/);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
