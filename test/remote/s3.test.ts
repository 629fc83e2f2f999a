/**
 * The S3 remote cache against a real S3 API: OpenStack Swift with s3api, started on 127.0.0.1 by
 * test/services/swift.sh (installed in CI by .ci/services.sh). Without Swift installed the
 * server tests are skipped with a message (set REMOTE_TESTS_REQUIRED=1 to fail instead); the
 * tests that need no server always run.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkManifest, MANIFEST_FORMAT, parseS3Url, RemoteError, type RemoteManifest } from '../../src/remote/remote.js';
import { S3Remote } from '../../src/remote/s3.js';
import { pullEntry, pushEntry } from '../../src/remote/transfer.js';
import { ArtifactStore } from '../../src/runtime/store.js';
import { startSwift, swiftInstalled, type Swift } from '../fixtures/swift.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
const manifestOf = (key: string, entry: Record<string, unknown> = {}): RemoteManifest => ({ format: MANIFEST_FORMAT, key, files: {}, entry: { key, ...entry } });

async function rejection(promise: Promise<unknown>): Promise<RemoteError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(RemoteError);
    return error as RemoteError;
  }
  throw new Error('expected a rejection');
}

describe('remote URL and manifest checks', () => {
  it('parses s3 URLs and refuses bad ones with remote_config', () => {
    expect(parseS3Url('s3://bucket')).toEqual({ bucket: 'bucket', prefix: '' });
    expect(parseS3Url('s3://bucket/team/cache/')).toEqual({ bucket: 'bucket', prefix: 'team/cache' });
    for (const bad of ['bucket/x', 's3://', 's3:///x', 's3://b/../x', 'https://b/x'])
      expect(() => parseS3Url(bad), bad).toThrowError(expect.objectContaining({ code: 'remote_config' }));
    // A bad bucket name says what is wrong with it, not just the URL's shape.
    expect(() => parseS3Url('s3://b/x')).toThrowError(/the bucket name "b" must be at least 2 letters/);
    expect(() => parseS3Url('s3://my bucket')).toThrowError(/the bucket name "my bucket"/);
    expect(() => parseS3Url('http://bucket')).toThrowError(/expected s3:\/\/bucket or s3:\/\/bucket\/prefix/);
  });

  it('refuses manifests that are the wrong shape or name paths outside the entry', () => {
    const good = { ...manifestOf('k'), files: { 'a/b.bin': { size: 3, sha256: sha256('abc') } } };
    expect(checkManifest(good, 'k')).toBeNull();
    expect(checkManifest(good, 'other')).toMatch(/describes key/);
    expect(checkManifest({ ...good, files: { '../x': { size: 1, sha256: sha256('x') } } }, 'k')).toMatch(/escapes/);
    expect(checkManifest({ ...good, files: { '/etc/x': { size: 1, sha256: sha256('x') } } }, 'k')).toMatch(/escapes/);
    expect(checkManifest({ ...good, files: { x: { size: -1, sha256: sha256('x') } } }, 'k')).toMatch(/size/);
    expect(checkManifest({ ...good, files: { x: { size: 1, sha256: 'abc' } } }, 'k')).toMatch(/sha256/);
    expect(checkManifest([], 'k')).toMatch(/object/);
  });

  it('fails with remote_unreachable within a bounded time when nothing listens', async () => {
    // A port that was free a moment ago: bind to 0, read it, close.
    const port = await new Promise<number>((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as net.AddressInfo;
        server.close(() => resolve(port));
      });
    });
    const remote = new S3Remote({ url: 's3://nobody/cache', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, connectTimeoutMs: 2_000 });
    const started = Date.now();
    const error = await rejection(remote.hasBlob(sha256('x')));
    expect(error.code).toBe('remote_unreachable');
    expect(error.message).toContain(`127.0.0.1:${port}`);
    expect(error.message).toContain('AWS_ENDPOINT_URL');
    expect(Date.now() - started).toBeLessThan(10_000); // three attempts with backoff
    remote.close();
  });

  it('retries a failed blob upload with a fresh stream of the whole file', async () => {
    // A stand-in server: HEAD says "absent", the first PUT fails with 503 after reading the body.
    const received: number[] = [];
    const server = http.createServer((request, response) => {
      if (request.method === 'HEAD') return response.writeHead(404).end();
      let bytes = 0;
      request.on('data', (chunk: Buffer) => (bytes += chunk.length));
      request.on('end', () => {
        received.push(bytes);
        if (received.length === 1) response.writeHead(503, { 'content-type': 'application/xml' }).end('<Error><Code>ServiceUnavailable</Code><Message>try again</Message></Error>');
        else response.writeHead(200, { etag: '"x"' }).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    const dir = testdir();
    try {
      const data = randomBytes(100_000);
      const remote = new S3Remote({ url: 's3://bucket/x', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } });
      expect(await remote.putBlob(sha256(data), dir.write('f.bin', data))).toBe('uploaded');
      expect(received).toEqual([100_000, 100_000]);
      remote.close();
    } finally {
      dir.cleanup();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('signs blob uploads with their sha256 and never sends aws-chunked, even with the SDK checksums on (as on AWS)', async () => {
    const puts: http.IncomingHttpHeaders[] = [];
    const server = http.createServer((request, response) => {
      if (request.method === 'HEAD') return response.writeHead(404).end();
      request.resume().on('end', () => {
        puts.push(request.headers);
        response.writeHead(200, { etag: '"x"' }).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    const dir = testdir();
    try {
      const data = randomBytes(50_000);
      const remote = new S3Remote({ url: 's3://bucket/x', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, awsChecksums: true });
      await remote.putBlob(sha256(data), dir.write('f.bin', data));
      remote.close();
      expect(puts).toHaveLength(1);
      expect(puts[0]?.['x-amz-content-sha256']).toBe(sha256(data));
      expect(puts[0]?.['content-length']).toBe('50000');
      expect(puts[0]?.['content-encoding'] ?? '').not.toContain('aws-chunked');
      expect(puts[0]?.authorization).toMatch(/^AWS4-HMAC-SHA256 .*SignedHeaders=[^,]*x-amz-content-sha256/);
    } finally {
      dir.cleanup();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('takes the endpoint from AWS_ENDPOINT_URL and refuses a malformed one', () => {
    const remote = new S3Remote({ url: 's3://bucket', env: { AWS_ENDPOINT_URL: 'http://127.0.0.1:1' } });
    expect(remote.endpoint).toBe('http://127.0.0.1:1');
    remote.close();
    expect(() => new S3Remote({ url: 's3://bucket', env: { AWS_ENDPOINT_URL: '127.0.0.1:1' } })).toThrowError(expect.objectContaining({ code: 'remote_config' }));
  });
});

describe.skipIf(!swiftInstalled)('S3Remote on OpenStack Swift (s3api)', () => {
  let endpoint = '';
  let credentials = { accessKeyId: '', secretAccessKey: '' };
  let swift: Swift | undefined;
  let raw: S3Client;
  let bucket = '';
  let dir: TestDir;
  const remotes: S3Remote[] = [];
  const open = (prefix: string, options: Partial<ConstructorParameters<typeof S3Remote>[0]> = {}) => {
    const remote = new S3Remote({ url: `s3://${bucket}/${prefix}`, endpoint, credentials, ...options });
    remotes.push(remote);
    return remote;
  };

  beforeAll(async () => {
    swift = await startSwift('fp-test');
    ({ endpoint, credentials, raw, bucket } = swift);
    dir = testdir();
  }, 180_000);

  afterAll(() => {
    for (const remote of remotes) remote.close();
    swift?.stop();
    dir?.cleanup();
  });

  it('round-trips a 2,000,000-byte blob byte for byte', async () => {
    const remote = open('blobs');
    const data = randomBytes(2_000_000);
    const digest = sha256(data);
    const source = dir.write('big.bin', data);
    expect(await remote.hasBlob(digest)).toBe(false);
    expect(await remote.putBlob(digest, source)).toBe('uploaded');
    expect(await remote.hasBlob(digest)).toBe(true);
    const dest = dir.path('big.copy');
    await remote.getBlob(digest, dest);
    expect(readFileSync(dest).equals(data)).toBe(true);
  });

  it('puts a blob idempotently: the second put finds it and sends nothing', async () => {
    const remote = open('idem');
    const data = randomBytes(10_000);
    const file = dir.write('idem.bin', data);
    expect(await remote.putBlob(sha256(data), file)).toBe('uploaded');
    expect(await remote.putBlob(sha256(data), file)).toBe('present');
    expect(await open('idem').putBlob(sha256(data), file)).toBe('present');
  });

  it('refuses to upload a file that does not match its digest (the server checks the signed sha256)', async () => {
    const remote = open('mismatch');
    const file = dir.write('liar.bin', 'not what the name says');
    const digest = sha256('something else');
    const error = await rejection(remote.putBlob(digest, file));
    expect(error.code).toBe('remote_corrupt');
    expect(await remote.hasBlob(digest)).toBe(false);
  });

  it('writes manifests first-writer-wins, through the HEAD-then-PUT fallback Swift needs', async () => {
    // What Swift's s3api does with a conditional PUT: 501 NotImplemented.
    const status = await raw
      .send(new PutObjectCommand({ Bucket: bucket, Key: 'probe/conditional', Body: 'x', IfNoneMatch: '*' }))
      .then(() => 200, (error: { $metadata?: { httpStatusCode?: number }; name?: string }) => error.$metadata?.httpStatusCode);
    expect(status).toBe(501);

    const first = open('manifests');
    expect(first.conditionalPut).toBeUndefined();
    expect(await first.putManifest('key1', manifestOf('key1', { writer: 'first' }))).toBe('written');
    expect(first.conditionalPut).toBe(false); // the 501 was met and the fallback used
    const second = open('manifests');
    expect(await second.putManifest('key1', manifestOf('key1', { writer: 'second' }))).toBe('exists');
    expect(second.conditionalPut).toBe(false);
    expect(await first.putManifest('key1', manifestOf('key1', { writer: 'again' }))).toBe('exists');
    expect((await second.getManifest('key1'))?.entry.writer).toBe('first');
    expect(await second.getManifest('absent')).toBeNull();
    expect(await second.listKeys()).toEqual(['key1']);
  });

  it('refuses a manifest on the server that is not JSON or not the right shape', async () => {
    const remote = open('badmanifest');
    await raw.send(new PutObjectCommand({ Bucket: bucket, Key: remote.manifestKey('k'), Body: '{not json' }));
    expect((await rejection(remote.getManifest('k'))).code).toBe('remote_corrupt');
    await raw.send(new PutObjectCommand({ Bucket: bucket, Key: remote.manifestKey('k'), Body: JSON.stringify({ ...manifestOf('k'), files: { '../../x': { size: 1, sha256: sha256('x') } } }) }));
    const error = await rejection(remote.getManifest('k'));
    expect(error.code).toBe('remote_corrupt');
    expect(error.message).toContain('escapes');
  });

  it('detects a blob corrupted on the server and leaves nothing at the destination', async () => {
    const remote = open('corrupt');
    const data = randomBytes(300_000);
    const digest = sha256(data);
    await remote.putBlob(digest, dir.write('good.bin', data));
    const bad = Buffer.from(data);
    bad[12_345] = (bad[12_345] ?? 0) ^ 0xff; // same size, one byte flipped
    await raw.send(new PutObjectCommand({ Bucket: bucket, Key: remote.blobKey(digest), Body: bad }));
    const target = dir.path('pulled', 'good.bin');
    dir.write('pulled/keep.txt', 'other files stay');
    const error = await rejection(remote.getBlob(digest, target));
    expect(error.code).toBe('remote_corrupt');
    expect(error.message).toContain(remote.blobKey(digest));
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(dir.path('pulled'))).toEqual(['keep.txt']); // no temp file left either
  });

  it('pushes an entry (blobs, then manifest) and pulls it back into a valid cache entry', async () => {
    const remote = open('entries');
    const local = new ArtifactStore(dir.path('store-a'));
    const key = sha256('the stage key');
    const tmp = await local.createTempDir(key);
    const files: Record<string, Buffer> = {
      'model.json': Buffer.from('{"format":"layers-model"}'),
      'weights.bin': randomBytes(400_000),
      'sub/dir/labels.json': Buffer.from('["coat","dress"]'),
      'copy-of-labels.json': Buffer.from('["coat","dress"]'), // same content: one blob
      'empty.txt': Buffer.alloc(0),
    };
    for (const [rel, content] of Object.entries(files)) dir.write(path.relative(dir.root, path.join(tmp, rel)), content);
    await local.commit(tmp, { key, kind: 'train-head', stage: 'head', provides: ['model'], metrics: { val_acc: 0.9 } });

    const pushed = await pushEntry(remote, key, local.entryDir(key));
    expect(pushed).toMatchObject({ key, uploaded: 4, present: 0, manifest: 'written' });
    expect(await pushEntry(remote, key, local.entryDir(key))).toMatchObject({ uploaded: 0, present: 4, bytesUploaded: 0, manifest: 'exists' });

    const other = new ArtifactStore(dir.path('store-b'));
    const into = await other.createTempDir(key);
    expect(await pullEntry(remote, sha256('never pushed'), into)).toBeNull();
    const pulled = await pullEntry(remote, key, into);
    expect(pulled).toMatchObject({ key, files: 5 });
    await mkdir(path.dirname(other.entryDir(key)), { recursive: true });
    await rename(into, other.entryDir(key));
    const check = await other.checkEntry(key);
    expect(check.state).toBe('ok');
    if (check.state === 'ok') expect(check.meta).toMatchObject({ kind: 'train-head', stage: 'head', provides: ['model'], metrics: { val_acc: 0.9 } });
    for (const [rel, content] of Object.entries(files)) expect(readFileSync(path.join(other.entryDir(key), rel)).equals(content), rel).toBe(true);
  });

  it('fails a pull whose blob was corrupted on the server', async () => {
    const remote = open('entries-corrupt');
    const local = new ArtifactStore(dir.path('store-c'));
    const key = sha256('another key');
    const tmp = await local.createTempDir(key);
    dir.write(path.relative(dir.root, path.join(tmp, 'a.bin')), randomBytes(1000));
    const meta = await local.commit(tmp, { key, kind: 'fake', stage: 's', provides: [], metrics: {} });
    await pushEntry(remote, key, local.entryDir(key));
    await raw.send(new PutObjectCommand({ Bucket: bucket, Key: remote.blobKey(meta.files['a.bin']!.sha256), Body: randomBytes(1000) }));
    const into = dir.path('pull-corrupt');
    expect((await rejection(pullEntry(remote, key, into))).code).toBe('remote_corrupt');
    expect(existsSync(path.join(into, 'a.bin'))).toBe(false);
  });

  it('maps wrong credentials to remote_auth, naming the bucket and the variables', async () => {
    const wrongSecret = open('auth', { credentials: { accessKeyId: credentials.accessKeyId, secretAccessKey: 'wrong' } });
    const error = await rejection(wrongSecret.hasBlob(sha256('x')));
    expect(error.code).toBe('remote_auth');
    expect(error.message).toContain(bucket);
    expect(error.message).toContain('AWS_SECRET_ACCESS_KEY');
    const unknownUser = open('auth', { credentials: { accessKeyId: 'nobody:none', secretAccessKey: 'x' } });
    expect((await rejection(unknownUser.putManifest('k', manifestOf('k')))).code).toBe('remote_auth');
  });

  it('maps a missing bucket to remote_not_found', async () => {
    const remote = new S3Remote({ url: `s3://${bucket}-missing/x`, endpoint, credentials });
    remotes.push(remote);
    const error = await rejection(remote.putManifest('k', manifestOf('k')));
    expect(error.code).toBe('remote_not_found');
    expect(error.message).toContain(`${bucket}-missing`);
  });
});
