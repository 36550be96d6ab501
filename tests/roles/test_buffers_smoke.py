from tests.helpers import random_buffer


async def test_put_get_roundtrip(node, http):
    cs, data = random_buffer(1000)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 200
    r = await http.get(f"{node.buffers_url}/{cs}")
    assert r.status_code == 200 and r.content == data
