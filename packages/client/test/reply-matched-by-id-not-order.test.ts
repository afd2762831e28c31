import { FakeQmpServer } from './support/fake-server.js';

// Guards against matching replies to commands by arrival order (the LXD bug): a server may
// answer out of order (QEMU does for out-of-band commands), and each caller must still get
// its own reply.
test('replies sent in reverse order reach the right callers', async () => {
  const server = await FakeQmpServer.start();
  try {
    const { client, connection } = await server.connect();
    const calls = ['a', 'b', 'c', 'd'].map((name) => client.execute(name));
    const commands = await Promise.all(calls.map(() => connection.receive()));
    for (const command of [...commands].reverse()) {
      await connection.send(`${JSON.stringify({ return: `answer to ${String(command['execute'])}`, id: command['id'] })}\n`);
    }
    await expect(Promise.all(calls)).resolves.toEqual(['answer to a', 'answer to b', 'answer to c', 'answer to d']);
    expect(new Set(commands.map((c) => c['id'])).size).toBe(4);
    await client.close({ timeout: 100 });
  } finally {
    await server.close();
  }
});
