import { QmpkitError, errorClassKinds, isQmpkitError } from '@qmpkit/errors';
import * as api from './index.js';

const details = { binary: 'qemu-img', argv: ['info', 'x'], exitCode: null, signal: 'SIGKILL' as const, stdout: '', stderr: '' };

describe('the qmpkit error family', () => {
  test('every exported error class declares its kind', () => {
    // A new class must say what kind of failure it is: add it here with its kind.
    expect(errorClassKinds(api)).toEqual({
      ImageFileError: 'other',
      ImageFileExistsError: 'state',
      ImageToolsAbortError: 'abort',
      ImageToolsArgumentError: 'usage',
      ImageToolsError: 'other',
      Qcow2WriteRangeError: 'usage',
      Qcow2WriterStateError: 'state',
      QemuImgError: 'tool',
      QemuIoError: 'tool',
      ToolError: 'tool',
      UnsupportedQcow2LayoutError: 'unsupported',
    });
  });

  test('a tool killed at its timeout or abort is of that kind; any other failure is a tool failure', () => {
    expect(new api.QemuImgError('timed out', { ...details, reason: 'timeout' }).kind).toBe('timeout');
    expect(new api.QemuIoError('aborted', { ...details, reason: 'abort' }).kind).toBe('abort');
    for (const reason of ['exit', 'signal', 'spawn', 'output'] as const) {
      expect(new api.QemuImgError(reason, { ...details, reason }).kind).toBe('tool');
    }
    expect(new api.ImageToolsAbortError('createQcow2Image', 'timeout').kind).toBe('timeout');
    expect(new api.ImageToolsAbortError('createQcow2Image', 'abort').kind).toBe('abort');
  });

  test('brands: the class, its bases, the family; names as before', () => {
    const error = new api.QemuIoError('failed', { ...details, reason: 'output', failures: ['write failed'] });
    expect(error.name).toBe('QemuIoError');
    expect([api.QemuIoError, api.ToolError, api.ImageToolsError, QmpkitError].map((c) => c.isInstance(error))).toEqual([true, true, true, true]);
    expect(api.QemuImgError.isInstance(error)).toBe(false);
    expect(isQmpkitError(error, 'tool')).toBe(true);
    // What another copy of the package makes: the same global symbols.
    expect(api.QemuIoError.isInstance({ [Symbol.for('qmpkit.image-tools.QemuIoError')]: true })).toBe(true);
  });
});
