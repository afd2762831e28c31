import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qemuImg, type MapEntry } from '@qmpkit/image-tools';
import { NbdClient, type NbdConnectOptions, type NbdExtent } from '../../src/index.js';

/** A scratch directory (`qmpkit-nbd-*`) for one test file, and the qemu-nbd processes it started. */
export class Scratch {
  readonly dir: string;
  readonly #children = new Set<ChildProcess>();
  readonly #clients = new Set<NbdClient>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async create(): Promise<Scratch> {
    return new Scratch(await mkdtemp(join(tmpdir(), 'qmpkit-nbd-')));
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  /**
   * Starts `qemu-nbd` serving `args` on a unix socket in the scratch dir, and returns the
   * socket's path. The client's connect waits for the socket to appear.
   */
  startQemuNbd(name: string, args: readonly string[]): { socket: string; stderr: () => string } {
    const socket = this.path(`${name}.sock`);
    const child = spawn(process.env['QEMU_NBD'] ?? 'qemu-nbd', [`--socket=${socket}`, '--persistent', ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (text: string) => {
      stderr += text;
    });
    child.on('error', (error) => {
      stderr += String(error);
    });
    this.#children.add(child);
    return { socket, stderr: () => stderr };
  }

  /** A connected client, closed by `cleanUp`. */
  async connect(socket: string | { host: string; port: number }, options: NbdConnectOptions = {}): Promise<NbdClient> {
    const client = await NbdClient.connect(socket, { connectTimeout: 20_000, ...options });
    this.#clients.add(client);
    return client;
  }

  async cleanUp(): Promise<void> {
    for (const client of this.#clients) await client.close({ timeout: 500 });
    await Promise.all(
      [...this.#children].map(async (child) => {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = new Promise((resolve) => child.once('exit', resolve));
          child.kill('SIGKILL');
          await exited;
        }
      }),
    );
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** The image's guest-visible bytes, through `qemu-img convert` to raw (the reference for reads). */
export async function referenceBytes(scratch: Scratch, image: string, format = 'qcow2'): Promise<Buffer> {
  const raw = scratch.path(`reference-${Date.now()}-${Math.random().toString(36).slice(2)}.raw`);
  await qemuImg.convert(image, raw, { format, outputFormat: 'raw', timeout: 120_000 });
  try {
    return await readFile(raw);
  } finally {
    await rm(raw, { force: true });
  }
}

/** Joins neighbouring runs that have the same key, to compare two descriptions of one image. */
export function runs<T>(items: readonly T[], offsetOf: (item: T) => number, lengthOf: (item: T) => number, key: (item: T) => string):
  { offset: number; length: number; key: string }[] {
  const out: { offset: number; length: number; key: string }[] = [];
  for (const item of items) {
    const k = key(item);
    const last = out[out.length - 1];
    if (last && last.key === k && last.offset + last.length === offsetOf(item)) last.length += lengthOf(item);
    else out.push({ offset: offsetOf(item), length: lengthOf(item), key: k });
  }
  return out;
}

/** `qemu-img map` as base:allocation would say it: hole = no data, zero = reads as zeroes. */
export function mapAsAllocation(map: readonly MapEntry[]): { offset: number; length: number; key: string }[] {
  return runs(map, (e) => e.start, (e) => e.length, (e) => `hole=${!e.data} zero=${e.zero}`);
}

export function extentsAsAllocation(extents: readonly NbdExtent[]): { offset: number; length: number; key: string }[] {
  return runs(extents, (e) => e.offset, (e) => e.length, (e) => `hole=${(e.flags & 1) !== 0} zero=${(e.flags & 2) !== 0}`);
}

export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

/** Offsets and lengths that hit every kind of alignment around `points` (cluster edges, data edges). */
export function alignmentCases(points: readonly number[], size: number): [number, number][] {
  const lengths = [1, 2, 3, 511, 512, 513, 4095, 4097, 65535, 65536, 65537, 200_001];
  const cases: [number, number][] = [];
  for (const point of points) {
    for (const delta of [-65537, -513, -1, 0, 1, 511, 4095]) {
      const offset = point + delta;
      for (const length of lengths) {
        if (offset >= 0 && offset + length <= size) cases.push([offset, length]);
      }
    }
  }
  return cases;
}
