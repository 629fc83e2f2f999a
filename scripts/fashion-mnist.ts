/**
 * Writes Fashion-MNIST images as PNGs in class folders (torchvision ImageFolder layout), from
 * the IDX files Debian's `dataset-fashion-mnist` package installs.
 *
 *   npx tsx scripts/fashion-mnist.ts --out DIR [--classes 0,1,7] [--per-class 8]
 *                                    [--split train|test] [--offset 0] [--source DIR]
 *
 * Each class gets the first `--per-class` images of that class after skipping `--offset` of
 * them, as DIR/<class-name>/<split>-<index>.png (index = position in the IDX file), so two runs
 * with different offsets never overlap.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { gunzipSync } from 'node:zlib';
import sharp from 'sharp';

/** Class folder names, by Fashion-MNIST label. */
export const FASHION_MNIST_CLASSES = ['t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle-boot'];
export const DEFAULT_SOURCE = '/usr/share/datasets/fashion-mnist';

/** Parses an IDX file (big-endian header: magic with type and rank, then the dimensions). */
export function parseIdx(bytes: Uint8Array): { shape: number[]; data: Uint8Array } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint16(0) !== 0 || bytes[2] !== 0x08) throw new Error('not an unsigned-byte IDX file');
  const rank = bytes[3];
  const shape = Array.from({ length: rank }, (_, i) => view.getUint32(4 + i * 4));
  const start = 4 + rank * 4;
  const length = shape.reduce((a, b) => a * b, 1);
  if (bytes.byteLength < start + length) throw new Error(`IDX file truncated: ${bytes.byteLength} < ${start + length} bytes`);
  return { shape, data: bytes.subarray(start, start + length) };
}

/** Options of `writeFashionMnist`. */
export interface FashionMnistOptions {
  out: string;
  classes: number[];
  perClass: number;
  split: 'train' | 'test';
  offset: number;
  source?: string;
}

/** Writes the PNGs; returns how many were written per class name. */
export async function writeFashionMnist(options: FashionMnistOptions): Promise<Record<string, number>> {
  const prefix = options.split === 'train' ? 'train' : 't10k';
  const source = options.source ?? DEFAULT_SOURCE;
  const images = parseIdx(gunzipSync(await readFile(join(source, `${prefix}-images-idx3-ubyte.gz`))));
  const labels = parseIdx(gunzipSync(await readFile(join(source, `${prefix}-labels-idx1-ubyte.gz`))));
  const [count, rows, cols] = images.shape;
  const seen = new Map<number, number>();
  const written: Record<string, number> = {};
  for (const label of options.classes) {
    if (!(label >= 0 && label < FASHION_MNIST_CLASSES.length)) throw new Error(`class ${label} is not 0-9`);
    written[FASHION_MNIST_CLASSES[label]] = 0;
    await mkdir(join(options.out, FASHION_MNIST_CLASSES[label]), { recursive: true });
  }
  for (let index = 0; index < count; index++) {
    const label = labels.data[index];
    const name = FASHION_MNIST_CLASSES[label];
    if (!(name in written) || written[name] >= options.perClass) continue;
    const position = seen.get(label) ?? 0;
    seen.set(label, position + 1);
    if (position < options.offset) continue;
    const pixels = images.data.subarray(index * rows * cols, (index + 1) * rows * cols);
    const file = join(options.out, name, `${options.split}-${String(index).padStart(5, '0')}.png`);
    await sharp(Buffer.from(pixels), { raw: { width: cols, height: rows, channels: 1 } }).png({ compressionLevel: 9 }).toFile(file);
    written[name]++;
    if (Object.values(written).every((n) => n >= options.perClass)) break;
  }
  return written;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      classes: { type: 'string', default: '0,1,2,3,4,5,6,7,8,9' },
      'per-class': { type: 'string', default: '8' },
      split: { type: 'string', default: 'train' },
      offset: { type: 'string', default: '0' },
      source: { type: 'string', default: DEFAULT_SOURCE },
    },
  });
  if (!values.out) throw new Error('--out DIR is required');
  if (values.split !== 'train' && values.split !== 'test') throw new Error('--split must be train or test');
  const written = await writeFashionMnist({
    out: values.out,
    classes: values.classes!.split(',').map((value) => Number(value.trim())),
    perClass: Number(values['per-class']),
    split: values.split,
    offset: Number(values.offset),
    source: values.source,
  });
  process.stdout.write(`${JSON.stringify(written)}\n`);
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('fashion-mnist.ts')) {
  main().catch((error: Error) => {
    process.stderr.write(`fashion-mnist: ${error.message}\n`);
    process.exit(1);
  });
}
