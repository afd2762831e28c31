export {
  QMPKIT_ERROR_KINDS,
  QmpkitError,
  brandSymbol,
  errorClassKinds,
  errorKind,
  hasBrand,
  isQmpkitError,
  setBrand,
} from './qmpkit-error.js';
export type { QmpkitErrorKind, QmpkitErrorOptions } from './qmpkit-error.js';
