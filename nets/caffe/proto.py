"""Caffe's files through the protobuf library: a deploy .prototxt (text format) and a
.caffemodel (binary), as caffe.NetParameter messages.

The schema is Caffe's own caffe.proto (BVLC/caffe @ 9b891540, BSD 2-clause: LICENSE-caffe),
with one field added: `ceil_mode` in PoolingParameter, which 33 of soeaver's prototxts set
(from an unmerged Caffe pull request). caffe.desc is that file compiled by protoc
(`python -m grpc_tools.protoc -I. --descriptor_set_out=caffe.desc caffe.proto`; a test checks it
matches), loaded into a descriptor pool of our own: no generated code, so any protobuf >= 4.22
reads it, and nothing is registered in protobuf's global pool.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from kern.errors import KernError

HERE = Path(__file__).parent


def net_parameter_class() -> Any:
    """The caffe.NetParameter message class."""
    return message_class("caffe.NetParameter")


@cache
def message_class(name: str) -> Any:
    """A message class of caffe.proto by full name (protobuf is imported here, only when used)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        raise KernError(
            "reading Caffe models needs the protobuf library: pip install 'kern-nn[caffe]'"
        ) from None
    files = descriptor_pb2.FileDescriptorSet.FromString((HERE / "caffe.desc").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def read_prototxt(path: str | Path) -> Any:
    """A deploy .prototxt -> NetParameter; one line naming the file and line where it does not parse."""
    return parse_prototxt(read_prototxt_text(path), path)


def read_prototxt_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise KernError(f"{path}: cannot read: {error.strerror or error}") from None


def parse_prototxt(text: str, path: str | Path) -> Any:
    """A prototxt's text -> NetParameter (path: for the error line)."""
    from google.protobuf import text_format

    net = net_parameter_class()()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as error:
        raise KernError(f"{path}:{_located(error)}: not a Caffe prototxt: {_reason(error)}") from None
    return net


def read_caffemodel(path: str | Path) -> Any:
    """A .caffemodel (binary NetParameter) -> NetParameter."""
    from google.protobuf.message import DecodeError

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise KernError(f"{path}: cannot read: {error.strerror or error}") from None
    net = net_parameter_class()()
    try:
        net.ParseFromString(data)
    except DecodeError as error:
        raise KernError(f"{path}: not a Caffe .caffemodel (binary protobuf): {error}") from None
    return net


def _located(error: Any) -> str:
    line, column = error.GetLine(), error.GetColumn()
    return f"{line}:{column}" if line else ""


def _reason(error: Any) -> str:
    """protobuf's message without its own 'line:column : ' prefix."""
    text = str(error)
    return text.split(" : ", 1)[1] if " : " in text else text
