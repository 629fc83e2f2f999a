/**
 * `S3Remote`: the remote cache on any S3 API (AWS S3, OpenStack Swift's s3api, Ceph RGW, …).
 *
 * Layout under `s3://bucket/prefix`:
 *   <prefix>/blobs/sha256/<first two hex>/<digest>   file contents, named by their sha256
 *   <prefix>/entries/<key>.json                      one manifest per cache key (RemoteManifest)
 *
 * Integrity: an upload is signed with `x-amz-content-sha256: <digest>`, so the server itself
 * refuses bytes that do not hash to the blob's name (AWS and Swift's s3api both check it); a
 * download is re-hashed here before it is renamed into place, because a server can corrupt
 * silently and the SDK's own response checksums are off for non-AWS endpoints (see below).
 *
 * Configuration comes from the standard AWS chain: credentials from the environment
 * (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`), `AWS_PROFILE` and
 * ~/.aws/{credentials,config}, SSO, instance roles; the region from `AWS_REGION` or the profile;
 * a custom endpoint from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` or the `endpoint` option.
 */
import { randomBytes, createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import {
  checkManifest,
  isCacheKey,
  isDigest,
  parseS3Url,
  RemoteError,
  type RemoteCache,
  type RemoteErrorCode,
  type RemoteManifest,
} from './remote.js';

export interface S3RemoteOptions {
  /** `s3://bucket` or `s3://bucket/prefix`. */
  url: string;
  /**
   * S3 API endpoint, e.g. `http://127.0.0.1:8080`. Default: `AWS_ENDPOINT_URL_S3`, then
   * `AWS_ENDPOINT_URL`, then AWS itself. A custom endpoint turns on path-style addressing and
   * turns off the SDK's default request/response checksums (see `awsChecksums`).
   */
  endpoint?: string;
  /** Region. Default: `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile; `us-east-1` for a custom endpoint. */
  region?: string;
  /** Explicit credentials (tests). Default: the SDK's provider chain (environment, profile, SSO, roles). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /**
   * Use the SDK's default flexible checksums (CRC32 on requests, validated on responses) for
   * manifests and downloads; blob uploads never use them (they are signed with their sha256).
   * Default: true on AWS, false on a custom endpoint: OpenStack Swift's s3api answers 501 to
   * aws-chunked uploads, and most S3 clones do not return the checksums the SDK would validate.
   */
  awsChecksums?: boolean;
  /** Milliseconds to wait for a TCP connection. Default 5,000. */
  connectTimeoutMs?: number;
  /** Milliseconds a request may go without data before it fails. Default 120,000. */
  requestTimeoutMs?: number;
  /** Attempts per request, the first included (the SDK's retry with backoff). Default 3. */
  maxAttempts?: number;
  /** Environment to read (tests pass their own). Default `process.env`. */
  env?: NodeJS.ProcessEnv;
}

/** Error names the SDK gives answers that mean "your credentials are wrong". */
const AUTH_ERRORS = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'InvalidToken',
  'ExpiredToken',
  'TokenRefreshRequired',
  'Forbidden',
  'CredentialsProviderError',
  'InvalidClientTokenId',
  'AuthorizationHeaderMalformed',
]);
/** The largest object one PutObject may send (S3's limit; larger needs multipart upload). */
const MAX_SINGLE_PUT = 5 * 1024 ** 3;
/** Socket-level failures: nothing answered. */
const NETWORK_ERRORS = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE']);

export class S3Remote implements RemoteCache {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  /** The endpoint in use, or undefined for AWS's own. */
  readonly endpoint: string | undefined;
  /**
   * Whether the server honours `If-None-Match: *` on PUT: undefined until the first manifest
   * write finds out; false after a 501 (Swift's s3api: "Conditional object PUTs are not
   * supported"), after which manifests are written HEAD-then-PUT.
   */
  conditionalPut: boolean | undefined;
  private readonly client: S3Client;
  /**
   * Blob uploads stream a file, and the SDK cannot rewind a stream to retry: this client makes
   * one attempt and `putBlob` retries with a fresh stream.
   */
  private readonly uploadClient: S3Client;
  private readonly maxAttempts: number;

  constructor(options: S3RemoteOptions) {
    const env = options.env ?? process.env;
    const { bucket, prefix } = parseS3Url(options.url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.url = `s3://${bucket}${prefix ? '/' + prefix : ''}`;
    const endpoint = options.endpoint ?? (env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined);
    if (endpoint !== undefined && !/^https?:\/\/[^/]/.test(endpoint))
      throw this.error('remote_config', `invalid S3 endpoint ${JSON.stringify(endpoint)} (from the endpoint option or AWS_ENDPOINT_URL): expected http(s)://host[:port]`, 'configure');
    this.endpoint = endpoint;
    const custom = endpoint !== undefined;
    const checksums = options.awsChecksums ?? !custom;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 3);
    const config: S3ClientConfig = {
      maxAttempts: this.maxAttempts,
      requestHandler: { connectionTimeout: options.connectTimeoutMs ?? 5_000, requestTimeout: options.requestTimeoutMs ?? 120_000 },
      ...(custom ? { endpoint, forcePathStyle: true } : {}),
      ...(checksums ? {} : { requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' }),
    };
    const region = options.region ?? (env.AWS_REGION || env.AWS_DEFAULT_REGION || (custom ? 'us-east-1' : undefined));
    if (region) config.region = region;
    if (options.credentials) config.credentials = options.credentials;
    this.client = new S3Client(config);
    // No flexible checksums on blob uploads, even on AWS: they would turn the body into
    // aws-chunked with a CRC trailer, which cannot carry the sha256 payload signature, and that
    // signature is the stronger check.
    this.uploadClient = new S3Client({ ...config, maxAttempts: 1, requestChecksumCalculation: 'WHEN_REQUIRED' });
  }

  /** Closes the client's sockets. */
  close(): void {
    this.client.destroy();
    this.uploadClient.destroy();
  }

  blobKey(digest: string): string {
    return this.objectKey(`blobs/sha256/${digest.slice(0, 2)}/${digest}`);
  }
  manifestKey(key: string): string {
    return this.objectKey(`entries/${key}.json`);
  }
  private objectKey(rel: string): string {
    return this.prefix ? `${this.prefix}/${rel}` : rel;
  }

  async hasBlob(digest: string): Promise<boolean> {
    this.checkDigest(digest, 'has_blob');
    return (await this.head(this.blobKey(digest), 'has_blob')) !== undefined;
  }

  async putBlob(digest: string, file: string, options: { replace?: boolean } = {}): Promise<'uploaded' | 'present'> {
    this.checkDigest(digest, 'put_blob');
    const objectKey = this.blobKey(digest);
    const info = await stat(file);
    const existing = options.replace ? undefined : await this.head(objectKey, 'put_blob');
    // Same name, same size: the same bytes (a wrong-size object is a broken upload: replace it).
    if (existing !== undefined && existing.size === info.size) return 'present';
    if (info.size > MAX_SINGLE_PUT)
      throw this.error('remote_config', `${file} is ${info.size} bytes: S3 takes at most 5 GiB in one PUT and multipart upload is not implemented`, 'put_blob', objectKey);
    for (let attempt = 1; ; attempt++) {
      const body = createReadStream(file);
      try {
        await this.uploadClient.send(this.blobPut(digest, objectKey, body, info.size));
        return 'uploaded';
      } catch (error) {
        const name = (error as { name?: string }).name;
        if (name === 'BadDigest' || name === 'XAmzContentSHA256Mismatch')
          throw this.error('remote_corrupt', `${file} does not match its sha256 ${digest}: the server refused the upload (the local file changed or is corrupt)`, 'put_blob', objectKey, error);
        const translated = this.translate(error, 'put_blob', objectKey);
        const retryable = translated.code === 'remote_unreachable' || translated.code === 'remote_server';
        if (!retryable || attempt >= this.maxAttempts) throw translated;
        await new Promise((resolve) => setTimeout(resolve, 200 * 2 ** attempt * (0.5 + Math.random())));
      } finally {
        body.destroy();
      }
    }
  }

  /** A PUT of the file, signed with its digest as the payload hash. */
  private blobPut(digest: string, objectKey: string, body: Readable, size: number): PutObjectCommand {
    const command = new PutObjectCommand({
      Bucket: this.bucket,
      Key: objectKey,
      Body: body,
      // A known length keeps the body a plain stream (no chunked encoding, which S3 refuses).
      ContentLength: size,
      ContentType: 'application/octet-stream',
    });
    // Sign the payload with its real sha256 (the blob's name) instead of UNSIGNED-PAYLOAD: the
    // server then refuses bytes that changed between here and there, or a file that does not
    // match its digest.
    command.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { headers?: Record<string, string> };
        if (request.headers) request.headers['x-amz-content-sha256'] = digest;
        return next(args);
      },
      { step: 'build', name: 'signBlobDigest' },
    );
    return command;
  }

  async getBlob(digest: string, destFile: string): Promise<void> {
    this.checkDigest(digest, 'get_blob');
    const objectKey = this.blobKey(digest);
    const body = await this.getBody(objectKey, 'get_blob');
    if (!body) throw this.error('remote_not_found', `blob ${digest} is not on ${this.url} (${objectKey}): push the entry again`, 'get_blob', objectKey);
    // Written beside the destination (same file system, so the rename is atomic) and renamed
    // only once its content is proven.
    const temp = path.join(path.dirname(destFile), `.${path.basename(destFile)}.${randomBytes(4).toString('hex')}.part`);
    const hash = createHash('sha256');
    try {
      await pipeline(
        body,
        new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            hash.update(chunk);
            callback(null, chunk);
          },
        }),
        createWriteStream(temp, { flags: 'wx' }),
      );
    } catch (error) {
      await rm(temp, { force: true });
      throw this.translate(error, 'get_blob', objectKey);
    }
    const actual = hash.digest('hex');
    if (actual !== digest) {
      await rm(temp, { force: true });
      throw this.error('remote_corrupt', `blob ${objectKey} on ${this.url} is corrupt: its content hashes to ${actual}, not ${digest}; delete that object and push again`, 'get_blob', objectKey);
    }
    await rename(temp, destFile);
  }

  async putManifest(key: string, manifest: RemoteManifest): Promise<'written' | 'exists'> {
    this.checkKey(key, 'put_manifest');
    const objectKey = this.manifestKey(key);
    const body = JSON.stringify(manifest, null, 1) + '\n';
    if (this.conditionalPut !== false) {
      try {
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: objectKey, Body: body, ContentType: 'application/json', IfNoneMatch: '*' }));
        this.conditionalPut = true;
        return 'written';
      } catch (error) {
        const { name, status } = describe(error);
        if (status === 412 || name === 'PreconditionFailed') {
          this.conditionalPut = true;
          return 'exists';
        }
        // AWS: a concurrent conditional write of the same key is in flight; it will win.
        if (status === 409 && name === 'ConditionalRequestConflict') return 'exists';
        if (status !== 501 && name !== 'NotImplemented') throw this.translate(error, 'put_manifest', objectKey);
        this.conditionalPut = false;
      }
    }
    // No conditional PUT on this server: HEAD then PUT. Two writers racing here can both write;
    // the later one wins, which is harmless: both manifests describe the same key and each
    // names only blobs its writer uploaded first.
    if ((await this.head(objectKey, 'put_manifest')) !== undefined) return 'exists';
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: objectKey, Body: body, ContentType: 'application/json' }));
    } catch (error) {
      throw this.translate(error, 'put_manifest', objectKey);
    }
    return 'written';
  }

  async getManifest(key: string): Promise<RemoteManifest | null> {
    this.checkKey(key, 'get_manifest');
    const objectKey = this.manifestKey(key);
    const body = await this.getBody(objectKey, 'get_manifest');
    if (!body) return null;
    let text: string;
    try {
      const chunks: Buffer[] = [];
      for await (const chunk of body) chunks.push(chunk as Buffer);
      text = Buffer.concat(chunks).toString('utf8');
    } catch (error) {
      throw this.translate(error, 'get_manifest', objectKey);
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw this.error('remote_corrupt', `manifest ${objectKey} on ${this.url} is not valid JSON; delete it and push the entry again`, 'get_manifest', objectKey, error);
    }
    const problem = checkManifest(value, key);
    if (problem) throw this.error('remote_corrupt', `manifest ${objectKey} on ${this.url} is invalid (${problem}); delete it and push the entry again`, 'get_manifest', objectKey);
    return value as RemoteManifest;
  }

  async listKeys(): Promise<string[]> {
    const prefix = this.objectKey('entries/');
    const keys: string[] = [];
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
      } catch (error) {
        throw this.translate(error, 'list_keys', prefix);
      }
      for (const object of page.Contents ?? []) {
        const name = object.Key?.slice(prefix.length);
        if (name?.endsWith('.json') && isCacheKey(name.slice(0, -5))) keys.push(name.slice(0, -5));
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return keys.sort();
  }

  /** HEAD: the object's size, or undefined when there is none. */
  private async head(objectKey: string, operation: string): Promise<{ size: number } | undefined> {
    try {
      const answer = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      return { size: answer.ContentLength ?? -1 };
    } catch (error) {
      if (isMissingObject(error)) return undefined;
      throw this.translate(error, operation, objectKey);
    }
  }

  /** GET: the body stream, or undefined when there is no such object. */
  private async getBody(objectKey: string, operation: string): Promise<Readable | undefined> {
    try {
      const answer = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      if (!answer.Body) throw new Error('empty response body');
      return answer.Body as Readable;
    } catch (error) {
      if (isMissingObject(error)) return undefined;
      throw this.translate(error, operation, objectKey);
    }
  }

  private checkDigest(digest: string, operation: string): void {
    if (!isDigest(digest)) throw this.error('remote_config', `not a hex sha256: ${JSON.stringify(digest)}`, operation);
  }
  private checkKey(key: string, operation: string): void {
    if (!isCacheKey(key)) throw this.error('remote_config', `not a cache key: ${JSON.stringify(key)}`, operation);
  }

  private error(code: RemoteErrorCode, message: string, operation: string, objectKey?: string, cause?: unknown, status?: number): RemoteError {
    return new RemoteError(
      code,
      message,
      { remote: this.url, operation, ...(objectKey !== undefined ? { objectKey } : {}), ...(status !== undefined ? { status } : {}) },
      cause === undefined ? undefined : { cause },
    );
  }

  /** Maps an SDK or socket error onto a `RemoteError` whose message says what to fix. */
  private translate(error: unknown, operation: string, objectKey: string): RemoteError {
    if (error instanceof RemoteError) return error;
    const { name, status, code, message } = describe(error);
    const where = this.endpoint ?? 'AWS S3';
    const fail = (kind: RemoteErrorCode, text: string) => this.error(kind, text, operation, objectKey, error, status);
    if (name === 'CredentialsProviderError' || /could not load credentials/i.test(message))
      return fail('remote_auth', `no AWS credentials for ${this.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (${message})`);
    if (/region is missing/i.test(message))
      return fail('remote_config', `no AWS region for ${this.url}: set AWS_REGION (or a region in your AWS profile)`);
    if ((code && NETWORK_ERRORS.has(code)) || name === 'TimeoutError' || name === 'RequestTimeout' || /socket hang up|timed? ?out/i.test(message) && status === undefined)
      return fail('remote_unreachable', `cannot reach ${where} for ${this.url} (${code ?? name}: ${message}): check AWS_ENDPOINT_URL / the endpoint option and that the server is up`);
    if (AUTH_ERRORS.has(name) || status === 401 || status === 403)
      return fail('remote_auth', `${where} refused the credentials for bucket ${this.bucket} (${name}${status ? ' ' + status : ''}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's permissions`);
    if (name === 'NoSuchBucket')
      return fail('remote_not_found', `bucket ${this.bucket} does not exist on ${where}: create it, or fix the remote URL ${this.url}`);
    if (status !== undefined && status >= 500)
      return fail('remote_server', `${where} failed on ${operation} ${objectKey} (${name} ${status}: ${message}); retry later`);
    return fail('remote_error', `${where} refused ${operation} ${objectKey} in bucket ${this.bucket} (${name}${status ? ' ' + status : ''}: ${message})`);
  }
}

function describe(error: unknown): { name: string; status: number | undefined; code: string | undefined; message: string } {
  const e = (error ?? {}) as { name?: string; message?: string; code?: string; $metadata?: { httpStatusCode?: number }; cause?: { code?: string }; errors?: { code?: string }[] };
  const code = e.code ?? e.cause?.code ?? e.errors?.find((inner) => inner.code)?.code;
  return { name: e.name ?? 'Error', status: e.$metadata?.httpStatusCode, code: typeof code === 'string' ? code : undefined, message: e.message ?? String(error) };
}

/** A 404 for an object (not for the bucket: NoSuchBucket is a configuration error). */
function isMissingObject(error: unknown): boolean {
  const { name, status } = describe(error);
  if (name === 'NoSuchBucket') return false;
  return name === 'NoSuchKey' || name === 'NotFound' || status === 404;
}
