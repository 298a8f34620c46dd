"""
TLS: every site on an C{ssl:} endpoint with a throw-away certificate
authority. The page and its scripts over https, JSONP over https, and chat
over wss all work for clients that trust the CA (and fail for one that does
not), and the config script points pages at https:// and wss:// URLs.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from support.wsclient import RecordingClient, next_message, wait_closed

TIMEOUT = 5

# Twisted's server-side TLS still hands pyOpenSSL objects to pyOpenSSL.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


# A throw-away certificate authority and server certificate -------------------

@dataclass(frozen=True)
class Certificates:
    ca_pem: bytes
    key_path: Path
    cert_path: Path

    def endpoint(self) -> str:
        return f"ssl:0:interface=127.0.0.1:privateKey={self.key_path}:certKey={self.cert_path}"

    def trust_root(self) -> Certificate:
        return Certificate.loadPEM(self.ca_pem)


def _certificate(subject: str, public_key, signing_key, issuer: x509.Name | None, ca: bool,
                 names: list[x509.GeneralName] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(issuer or name).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("appserver test CA", ca_key.public_key(), ca_key, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("127.0.0.1", server_key.public_key(), ca_key, ca.subject, ca=False,
                          names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    key_path, cert_path = directory / "server.key", directory / "server.pem"
    key_path.write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return Certificates(ca.public_bytes(serialization.Encoding.PEM), key_path, cert_path)


# Clients that trust the CA ------------------------------------------------------

@pytest.fixture
def https(reactor, certificates):
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=certificates.trust_root()),
                  pool=pool)
    yield HTTPClient(agent)
    pytest_twisted.blockon(pool.closeCachedConnections())


async def open_wss(reactor, url, trust_root):
    """
    Autobahn over C{wrapClientTLS}: the client checks the server's
    certificate against C{trust_root} and its name (an IP address here).
    """
    match = re.fullmatch(r"wss://([\d.]+):(\d+)(/.*)", url)
    assert match, url
    host, port = match.group(1), int(match.group(2))
    factory = WebSocketClientFactory(url)
    factory.protocol = RecordingClient
    factory.setProtocolOptions(closeHandshakeTimeout=TIMEOUT)  # not 1s: a busy server answers late
    factory.opened, factory.closed, factory.waiting = defer.Deferred(), defer.Deferred(), None
    endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust_root),
                             TCP4ClientEndpoint(reactor, host, port, timeout=TIMEOUT))
    await endpoint.connect(factory).addTimeout(TIMEOUT, reactor)
    return await factory.opened.addTimeout(TIMEOUT, reactor)


def config_urls(script: str) -> dict[str, str]:
    match = re.fullmatch(r"window\.AppServerConfig = (\{.*\});\n", script)
    assert match, script
    return json.loads(match.group(1))


async def chat_over_wss(reactor, url, trust_root):
    client = await open_wss(reactor, url, trust_root)
    welcome = await next_message(client, reactor)
    assert welcome["type"] == "welcome" and welcome["data"]["transport"] == "websocket"
    client.sendMessage(json.dumps({"type": "chat", "data": "over tls"}).encode())
    chat = await next_message(client, reactor)
    assert chat["type"] == "chat" and chat["data"].endswith(" : over tls")
    client.sendClose(1000)
    assert (await wait_closed(client, reactor))[0] == 1000


async def jsonp_chat_over_https(https, reactor, ajax_url):
    connect = await https.get(f"{ajax_url}/connect?callback=onConnect")
    body = await connect.text()
    assert connect.code == 200 and body.startswith("/**/onConnect(")
    session = json.loads(body[len("/**/onConnect("):-2])["session"]
    message = quote(json.dumps({"type": "chat", "data": "jsonp over tls"}))
    sent = await https.get(f"{ajax_url}/send?session={session}&callback=onSent&msg={message}")
    assert await sent.text() == '/**/onSent({"ok":true});'
    poll = await https.get(f"{ajax_url}/poll?session={session}&since=0&callback=onPoll")
    text = await poll.text()
    assert text.startswith("/**/onPoll(")
    messages = json.loads(text[len("/**/onPoll("):-2])["messages"]
    assert [m["type"] for m in messages] == ["welcome", "chat"]
    assert messages[1]["data"].endswith(" : jsonp over tls")


# In-process, three sites -------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_page_and_its_scripts_load_over_https(server_factory, certificates, https):
    endpoint = certificates.endpoint()
    server = await server_factory(static=endpoint, ajax=endpoint, ws=endpoint)
    base = f"https://127.0.0.1:{server.port('static')}"
    page = await https.get(base + "/")
    assert page.code == 200 and b"<" in await page.content()
    jquery = await https.get(base + "/vendor/jquery.min.js")
    assert jquery.code == 200 and b"jQuery" in (await jquery.content())[:2000]
    script = await https.get(base + "/appserver-config.js")
    assert config_urls(await script.text()) == {
        "wsUrl": f"wss://127.0.0.1:{server.port('ws')}/",
        "ajaxUrl": f"https://127.0.0.1:{server.port('ajax')}",
    }


@pytest_twisted.ensureDeferred
async def test_jsonp_works_over_https(server_factory, certificates, https, reactor):
    endpoint = certificates.endpoint()
    server = await server_factory(static=endpoint, ajax=endpoint, ws=endpoint)
    await jsonp_chat_over_https(https, reactor, f"https://127.0.0.1:{server.port('ajax')}")


@pytest_twisted.ensureDeferred
async def test_chat_works_over_wss(server_factory, certificates, reactor):
    endpoint = certificates.endpoint()
    server = await server_factory(static=endpoint, ajax=endpoint, ws=endpoint)
    await chat_over_wss(reactor, f"wss://127.0.0.1:{server.port('ws')}/", certificates.trust_root())


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_trust_the_ca_is_refused(server_factory, certificates, reactor):
    endpoint = certificates.endpoint()
    server = await server_factory(static=endpoint, ajax=endpoint, ws=endpoint)
    other_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _certificate("another CA", other_key.public_key(), other_key, None, ca=True)
    wrong_root = Certificate.loadPEM(stranger.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConnectionError, match="certificate verify failed"):
        await open_wss(reactor, f"wss://127.0.0.1:{server.port('ws')}/", wrong_root)
    assert server.tracker.client_count == 0


@pytest_twisted.ensureDeferred
async def test_an_intermediate_certificate_goes_in_extra_cert_chain(server_factory, tmp_path, reactor):
    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate("test root", root_key.public_key(), root_key, None, ca=True)
    middle = _certificate("test intermediate", middle_key.public_key(), root_key, root.subject, ca=True)
    leaf = _certificate("127.0.0.1", leaf_key.public_key(), middle_key, middle.subject, ca=False,
                        names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    (tmp_path / "key.pem").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "chain.pem").write_bytes(middle.public_bytes(serialization.Encoding.PEM))
    endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={tmp_path / 'key.pem'}:certKey={tmp_path / 'cert.pem'}"
                f":extraCertChain={tmp_path / 'chain.pem'}")
    server = await server_factory(ws=endpoint)
    trust_root = Certificate.loadPEM(root.public_bytes(serialization.Encoding.PEM))
    await chat_over_wss(reactor, f"wss://127.0.0.1:{server.port('ws')}/", trust_root)


# In-process, single port -----------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_single_port_mode_over_tls(server_factory, certificates, https, reactor):
    server = await server_factory(listen=certificates.endpoint())
    base = f"https://127.0.0.1:{server.port('single')}"
    script = await https.get(base + "/appserver-config.js")
    urls = config_urls(await script.text())
    assert urls == {"wsUrl": f"wss://127.0.0.1:{server.port('single')}/ws", "ajaxUrl": f"{base}/ajax"}
    await jsonp_chat_over_https(https, reactor, urls["ajaxUrl"])
    await chat_over_wss(reactor, urls["wsUrl"], certificates.trust_root())


@pytest_twisted.ensureDeferred
async def test_behind_a_tls_proxy_the_single_port_page_gets_secure_urls(server_factory):
    server = await server_factory(listen="tcp:0:interface=127.0.0.1")
    script = await treq.get(server.static_url + "/appserver-config.js", persistent=False,
                            headers={"Host": ["chat.example.com"], "X-Forwarded-Proto": ["https"]})
    assert config_urls(await script.text()) == {"wsUrl": "wss://chat.example.com/ws",
                                                "ajaxUrl": "https://chat.example.com/ajax"}


# twistd --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_twistd_serves_every_site_over_tls(server_process, certificates, https, reactor):
    endpoint = certificates.endpoint()
    process = server_process("--static", endpoint, "--ajax", endpoint, "--ws", endpoint)
    script = await https.get(f"https://127.0.0.1:{process.ports['static']}/appserver-config.js")
    urls = config_urls(await script.text())
    assert urls == {"wsUrl": f"wss://127.0.0.1:{process.ports['ws']}/",
                    "ajaxUrl": f"https://127.0.0.1:{process.ports['ajax']}"}
    ready = await https.get(urls["ajaxUrl"] + "/readyz")
    assert (ready.code, await ready.json()) == (200, {"status": "ready"})
    await chat_over_wss(reactor, urls["wsUrl"], certificates.trust_root())
