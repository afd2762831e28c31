// The mutants `npm run mutants` puts, one at a time, into the SDK packages the conformance
// suite runs on. Each is a plausible bug (the kind a refactor or a misread of QEMU's docs
// makes), written as one exact text replacement in one source file; `find` must occur exactly
// once, so a mutant whose code has moved fails loudly instead of silently testing nothing.
// `equivalent` marks a mutant no case can tell from the original, `gap` one the suite could but
// does not catch yet; both say why. Any other survivor fails `npm run mutants`.
//
// The first four are the bugs of issue 12's table that the suite did not catch before.

export const mutants = [
  {
    id: 'compare-always-identical',
    file: 'packages/image-tools/src/image-compare.ts',
    bug: 'compareImages answers "identical" whatever the images hold',
    find: "return { ...(await compareInProcess(a, formatA, b, formatB, checkStopped)), engine: 'in-process' };",
    replace:
      "await compareInProcess(a, formatA, b, formatB, checkStopped);\n    return { identical: true, message: 'Images are identical.', engine: 'in-process' };",
  },
  {
    id: 'bitmap-granularity-dropped',
    file: 'packages/backup/src/bitmaps.ts',
    bug: 'addBitmap drops the granularity argument (QEMU then uses its default, 64 KiB here)',
    find: "  await execute(qmp, 'block-dirty-bitmap-add', args, options);",
    replace: "  const { granularity: _dropped, ...rest } = args;\n  await execute(qmp, 'block-dirty-bitmap-add', rest, options);",
  },
  {
    id: 'qemu-io-write-pattern',
    file: 'packages/image-tools/src/qemu-io.ts',
    bug: 'qemu-io write commands carry a different pattern byte than asked (reads are unchanged)',
    find: "      if (request.pattern !== undefined) flags.push('-P', hexByte(patternArgument(request.pattern)));",
    replace: "      if (request.pattern !== undefined) flags.push('-P', hexByte((patternArgument(request.pattern) + 1) & 0xff));",
  },
  {
    id: 'incremental-sent-as-full',
    file: 'packages/backup/src/job.ts',
    bug: "incremental backups are sent as sync 'full' with bitmap-mode 'on-success' (same content, whole disk copied)",
    find: "  const withId = { ...args, 'job-id': args['job-id'] ?? args.device };",
    replace:
      "  const withId = {\n    ...args,\n    'job-id': args['job-id'] ?? args.device,\n    ...(args.sync === 'incremental' ? { sync: 'full' as const, 'bitmap-mode': 'on-success' as const } : {}),\n  };",
  },
  // The table's bugs the suite already caught.
  {
    id: 'completion-mode-dropped',
    file: 'packages/backup/src/transaction.ts',
    bug: "a transaction's completion-mode is not sent",
    find: "      : { actions: [...this.actions], properties: { 'completion-mode': this.#completionMode } };",
    replace: '      : { actions: [...this.actions] };',
  },
  {
    id: 'job-error-as-success',
    file: 'packages/backup/src/job.ts',
    bug: 'a job that completed with an error is reported as completed',
    find: "      if (error !== undefined) return { ...base, status: 'failed', offset, len, error };",
    replace: "      if (error !== undefined) return { ...base, status: 'completed', offset, len };",
  },
  {
    id: 'target-without-backing',
    file: 'packages/image-tools/src/qcow2-create.ts',
    bug: 'createQcow2Image ignores the backing file (and its format)',
    find: "  const backingFile = options.backingFile === undefined ? undefined : Buffer.from(stringArgument(options.backingFile, 'backingFile'));\n  const backingFormat =\n    options.backingFormat === undefined ? undefined : Buffer.from(stringArgument(options.backingFormat, 'backingFormat'));",
    replace: '  const backingFile: Buffer | undefined = undefined;\n  const backingFormat: Buffer | undefined = undefined;',
  },
  // Backup.
  {
    id: 'job-result-before-null',
    file: 'packages/backup/src/job.ts',
    bug: "a job's result resolves at BLOCK_JOB_COMPLETED/CANCELLED instead of its final JOB_STATUS_CHANGE",
    find: "        if (event.event === 'JOB_STATUS_CHANGE' && data['status'] === 'null') break;",
    replace:
      "        if (event.event === 'BLOCK_JOB_COMPLETED' || event.event === 'BLOCK_JOB_CANCELLED' || (event.event === 'JOB_STATUS_CHANGE' && data['status'] === 'null')) break;",
  },
  {
    id: 'bitmap-busy-recording-swapped',
    file: 'packages/backup/src/bitmaps.ts',
    bug: "the bitmap status reports 'busy' as 'recording' and the other way round",
    find: '    busy: info.busy,\n    recording: info.recording,',
    replace: '    busy: info.recording,\n    recording: info.busy,',
  },
  {
    id: 'job-offset-short-of-len-accepted',
    file: 'packages/backup/src/job.ts',
    bug: 'a job that completed short of its len (offset < len) is reported as completed',
    find: '      if (offset !== len) {',
    replace: '      if (false) {',
    equivalent: 'QEMU 7.2 never completes a backup job short of its len without an error, so no case can see the difference',
  },
  // image-tools.
  {
    id: 'reader-ignores-backing',
    file: 'packages/image-tools/src/image-read.ts',
    bug: 'the in-process reader reads unallocated clusters as zeros instead of from the backing file',
    find: '    if (this.backing === undefined || offset >= this.backing.size) return ZERO;',
    replace: '    return ZERO;',
  },
  {
    id: 'reader-zero-flag-ignored',
    file: 'packages/image-tools/src/image-read.ts',
    bug: "the in-process reader ignores qcow2's zero-cluster flag",
    gap: 'no case writes zeros over data, and the backups QEMU 7.2 makes here hold no zero clusters, so nothing reads one (image-tools tests it against qemu-img)',
    find: '      if (this.zeroFlag && (low & 1) !== 0) return ZERO;\n',
    replace: '',
  },
  {
    id: 'compare-offset-off-by-a-sector',
    file: 'packages/image-tools/src/image-compare.ts',
    bug: 'compareImages reports the first mismatch one sector late',
    find: '    if (sector >= 0) return mismatch(offset + sector);',
    replace: '    if (sector >= 0) return mismatch(offset + sector + SECTOR);',
  },
  {
    id: 'compare-ignores-size-tail',
    file: 'packages/image-tools/src/image-compare.ts',
    bug: "compareImages does not look at the larger image's part past the smaller one's end",
    find: "      if (firstNonZeroSector(bufferA, length) >= 0) return { identical: false, message: 'Warning: Image size mismatch!' };",
    replace: '      firstNonZeroSector(bufferA, length);',
  },
  {
    id: 'cluster-size-ignored',
    file: 'packages/image-tools/src/qcow2-create.ts',
    bug: 'createQcow2Image ignores clusterSize (always 64 KiB)',
    find: '  const clusterBits = clusterBitsOf(options.clusterSize);',
    replace: '  const clusterBits = clusterBitsOf(undefined);',
  },
  {
    id: 'locks-unchecked',
    file: 'packages/image-tools/src/image-locks.ts',
    bug: 'compareImages no longer looks at image locks',
    find: '  let table: string;\n',
    replace: '  if (files.length > 0) return undefined;\n  let table: string;\n',
    equivalent: 'the suite compares only images QEMU has closed, so no comparison meets a lock (image-tools tests it with a writer holding the image)',
  },
  {
    id: 'qemu-io-failures-unseen',
    file: 'packages/image-tools/src/qemu-io.ts',
    bug: 'findQemuIoFailures finds nothing (qemu-io failures go unreported)',
    find: '    if (FAILURE_LINES.some((re) => re.test(line))) failures.push(line);',
    replace: '    if (FAILURE_LINES.some((re) => re.test(line)) && line === "") failures.push(line);',
    equivalent: 'no write of the suite fails, and the read-backs parse qemu-io output themselves, so nothing here can fail to be reported',
  },
  // Client.
  {
    id: 'listener-wait-leaves-event-queued',
    file: 'packages/client/src/events.ts',
    bug: "an event a listener's pending wait takes also stays in the listener's queue (it is taken twice)",
    find: '        if (taken) {\n          wait.resolve(event);\n          return;\n        }',
    replace: '        if (taken) {\n          wait.resolve(event);\n          break;\n        }',
  },
  {
    id: 'partial-match-ignores-values',
    file: 'packages/client/src/events.ts',
    bug: 'a partial match checks that keys exist, not their values',
    gap: "the suite's only partial-match wait (the QEMU-named job's JOB_STATUS_CHANGE) runs while one job exists, so every candidate matches (the client's tests cover matchesPartial)",
    find: '      if (!(key in value) || !matchesPartial(value[key], pattern[key])) return false;',
    replace: '      if (!(key in value)) return false;',
  },
  {
    id: 'listener-drain-returns-nothing',
    file: 'packages/client/src/events.ts',
    bug: "a listener's drain() empties its queue but returns nothing",
    find: '    for (const event of this.#queue) (test(event) ? taken : kept).push(event);',
    replace: '    for (const event of this.#queue) (test(event) ? [] : kept).push(event);',
  },
];
