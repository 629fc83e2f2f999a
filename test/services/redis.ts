/**
 * A real Redis for the tests: Debian's `redis-server` on 127.0.0.1, a free port, a temp dir,
 * no persistence; ready in ~35 ms. `startRedis()` returns null when redis-server is not
 * installed (`.ci/services.sh` installs it; set REDIS_TESTS_REQUIRED=1 to make that a failure).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface RedisServer {
  url: string;
  port: number;
  /** Stops the server and removes its dir. */
  stop(): Promise<void>;
}

export const redisInstalled = spawnSync('bash', ['-c', 'command -v redis-server'], { stdio: 'ignore' }).status === 0;

/** Why the Redis tests are skipped, or throws when REDIS_TESTS_REQUIRED=1. */
export function redisMissing(): string | undefined {
  if (redisInstalled) return undefined;
  const install = 'run .ci/services.sh (apt-get install -y redis-server)';
  if (process.env.REDIS_TESTS_REQUIRED === '1') throw new Error(`redis-server is not installed and REDIS_TESTS_REQUIRED=1: ${install}`);
  return `redis-server is not installed, so the BullMQ tests are skipped: ${install}`;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => (socket.destroy(), resolve(data.toString().startsWith('+PONG'))));
    socket.once('error', () => resolve(false));
  });
}

export async function startRedis(): Promise<RedisServer | null> {
  if (!redisInstalled) return null;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fp-redis-'));
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d) => (output += d));
    child.stderr!.on('data', (d) => (output += d));
    const started = Date.now();
    while (Date.now() - started < 5000 && child.exitCode === null && !(await answers(port))) await new Promise((r) => setTimeout(r, 20));
    if (child.exitCode === null && (await answers(port))) {
      return {
        url: `redis://127.0.0.1:${port}`,
        port,
        async stop() {
          if (child.exitCode === null) {
            const exited = new Promise((r) => child.once('exit', r));
            child.kill('SIGTERM');
            await exited;
          }
          rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    child.kill('SIGKILL');
    // Another process took the port between our probe and redis-server's bind: try another.
    if (attempt >= 2) throw new Error(`redis-server did not start: ${output.slice(-1000)}`);
  }
}
