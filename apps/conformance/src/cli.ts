// The bin: the library's own entry point (a self-reference, kept external by tsup), so the
// published CLI runs the same dist/index.js consumers import instead of bundling a second copy.
import { main } from '@qmpkit/conformance';

void main();
