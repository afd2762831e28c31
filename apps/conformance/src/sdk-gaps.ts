// Small adapters for what the SDK does not offer (yet). Each item says which package it
// belongs to; the lead moves them there and this file shrinks.

import { QmpProtocolError } from '@qmpkit/client';
import { QemuLaunchError, type MachineQmpClient, type QemuMachine } from '@qmpkit/machine';
import type { BlockdevCreateOptions } from '@qmpkit/schema';

import { writeFile } from 'node:fs/promises';

import { ImageCreateError } from './errors.js';

/** What `createImageInQemu` creates: a qcow2 image, as `qemu-img create -f qcow2` would. */
export interface InQemuImageSpec {
  filename: string;
  /** Virtual size in bytes. */
  size: number;
  clusterSize?: number;
  backingFile?: string;
  backingFormat?: 'qcow2' | 'raw';
}

export interface CallOptions {
  signal?: AbortSignal;
  timeout?: number;
}

let createSerial = 0;

/**
 * Run one `blockdev-create` job to its end and dismiss it, taking every JOB_STATUS_CHANGE it
 * emits out of the client's buffer (so "no events left" checks of the cases still hold).
 */
async function runCreateJob(
  qmp: MachineQmpClient,
  id: string,
  filename: string,
  options: BlockdevCreateOptions,
  call: CallOptions,
): Promise<void> {
  const statuses: string[] = [];
  let error: string | undefined;
  const track = (async (): Promise<void> => {
    for (;;) {
      const event = await qmp.events.wait('JOB_STATUS_CHANGE', { match: (e) => e.data.id === id, ...call });
      statuses.push(event.data.status);
      if (event.data.status === 'concluded') {
        // Only a job that went through 'aborting' failed; ask for its error then, not every time.
        if (statuses.includes('aborting')) {
          const jobs = await qmp.execute('query-jobs', {}, call);
          error = jobs.find((j) => j.id === id)?.error ?? 'the job was aborted';
        }
        await qmp.execute('job-dismiss', { id }, call);
      }
      if (event.data.status === 'null') return;
    }
  })();
  // The waiter is registered before the command, so no event can slip past it.
  try {
    await qmp.execute('blockdev-create', { 'job-id': id, options }, call);
  } catch (startError) {
    track.catch(() => undefined);
    throw startError;
  }
  await track;
  if (error !== undefined) throw new ImageCreateError(id, filename, error);
}

/**
 * Belongs in @qmpkit/backup (next to the targets it prepares for `blockdev-backup`, or in
 * @qmpkit/machine): create a qcow2 image through the running QEMU with `blockdev-create`,
 * instead of spawning `qemu-img create`. The image is made by the same qcow2 code with the
 * same defaults (v3, 64 KiB clusters unless given, 16-bit refcounts, zlib, no extended L2),
 * but costs one short job inside QEMU (~8 ms CPU) instead of a process (~25 ms CPU plus the
 * fork of the Node process). The empty file is created here, as the file protocol's own
 * create would (size 0); the qcow2 job opens it through an inline `file` node that QEMU
 * closes when the job ends.
 */
export async function createImageInQemu(qmp: MachineQmpClient, spec: InQemuImageSpec, call: CallOptions = {}): Promise<void> {
  const id = `qmpkit-create-${process.pid}-${createSerial++}`;
  // Truncates an existing file, as qemu-img create does.
  await writeFile(spec.filename, '', call.signal === undefined ? {} : { signal: call.signal });
  await runCreateJob(
    qmp,
    id,
    spec.filename,
    {
      driver: 'qcow2',
      file: { driver: 'file', filename: spec.filename },
      size: spec.size,
      ...(spec.clusterSize === undefined ? {} : { 'cluster-size': spec.clusterSize }),
      ...(spec.backingFile === undefined
        ? {}
        : { 'backing-file': spec.backingFile, 'backing-fmt': spec.backingFormat ?? 'qcow2' }),
    },
    call,
  );
}

/** Whether `error` (or one of its causes) is the client refusing an event that came before the greeting. */
function isEventBeforeGreeting(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (QmpProtocolError.isInstance(e) && /expected a QMP greeting, got an event/.test(e.message)) return true;
  }
  return false;
}

/**
 * Belongs in @qmpkit/client: when the client connects while QEMU is still starting, QEMU can
 * send an event (RESUME, as the machine starts running) before its greeting; the client then
 * fails the connection ("expected a QMP greeting, got an event") and the launch fails with
 * `QemuLaunchError` (seen about once in 60 launches on a loaded 2-core machine). The client
 * should keep such events (buffer them, or drop them) and go on with the greeting. Until it
 * does, a launch that failed this way is tried once more; any other failure is thrown as is.
 */
export async function launchMachine(machine: QemuMachine, options: { signal?: AbortSignal; timeout?: number }): Promise<void> {
  try {
    await machine.launch(options);
  } catch (error) {
    if (!QemuLaunchError.isInstance(error) || !isEventBeforeGreeting(error) || options.signal?.aborted) throw error;
    await machine.launch(options);
  }
}
