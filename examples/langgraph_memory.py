"""A LangGraph agent that remembers its users across conversations, through memkv.

Offline: the chat model is a fake from ``langchain_core`` and the embedding a hashed
bag of words, so no network and no API key are needed::

    python examples/langgraph_memory.py                            # the local store
    python examples/langgraph_memory.py redis://localhost:6379/0   # Redis (or a cluster)

Needs ``pip install "memkv[langgraph]"`` (and ``"memkv[redis]"`` for a Redis URL).

The graph has two nodes. ``recall`` reads the user's message: "remember ..." writes a
memory into the LangGraph store (``runtime.store``) under ``("memories", <user id>)``,
with a TTL of 30 days; anything else searches that namespace by meaning (cosine
ranking of the stored embeddings) and passes the best matches on. ``respond`` gives
them to the chat model as a system message. The user comes in as the run's context
(``context=UserContext(...)``), the conversation as the checkpointer's ``thread_id``:
a conversation's messages stay in its thread (short-term memory), while the memories
outlive it (long-term memory): a new thread, or on Redis a new process, recalls them.
"""

from __future__ import annotations

import math
import re
import sys
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from memkv import open_store
from memkv.integrations.langgraph import MemkvStore

DIMENSIONS = 64
MEMORY_TTL_MINUTES = 30 * 24 * 60


class WordHashEmbeddings(Embeddings):
    """A deterministic, offline embedding: words hashed into ``DIMENSIONS`` buckets,
    normalised. Texts that share words point the same way, which is all a demo needs."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        vector = [0.0] * DIMENSIONS
        for word in re.findall(r"[a-z']+", text.lower()):
            vector[zlib.crc32(word.encode()) % DIMENSIONS] += 1.0
        norm = math.sqrt(sum(value * value for value in vector)) or 1.0
        return [value / norm for value in vector]


class State(MessagesState):
    recalled: list[str]


@dataclass
class UserContext:
    """What a run knows about its caller (``invoke(..., context=...)``)."""

    user_id: str


def recall(state: State, runtime: Runtime[UserContext]) -> dict[str, list[str]]:
    """Store a "remember ..." message as a memory, or look up the ones a message needs."""
    assert runtime.store is not None  # the graph is compiled with a store
    namespace = ("memories", runtime.context.user_id)
    text = str(state["messages"][-1].content)
    if text.lower().startswith("remember "):
        memory = {"text": text[len("remember ") :]}
        runtime.store.put(namespace, str(uuid.uuid4()), memory, ttl=MEMORY_TTL_MINUTES)
        return {"recalled": []}
    found = runtime.store.search(namespace, query=text, limit=2)
    return {"recalled": [item.value["text"] for item in found]}


def build_agent(store: BaseStore, replies: Sequence[str]) -> CompiledStateGraph:
    """The two-node graph, compiled with ``store`` for long-term memories and a
    checkpointer for each conversation's messages; the fake model answers ``replies``."""
    model = FakeListChatModel(responses=list(replies))

    def respond(state: State) -> dict[str, list[object]]:
        known = "\n".join(f"- {memory}" for memory in state["recalled"]) or "- nothing yet"
        system = SystemMessage(f"What you know about the user:\n{known}")
        return {"messages": [model.invoke([system, *state["messages"]])]}

    graph = StateGraph(State, context_schema=UserContext)
    graph.add_node("recall", recall)
    graph.add_node("respond", respond)
    graph.add_edge(START, "recall")
    graph.add_edge("recall", "respond")
    graph.add_edge("respond", END)
    return graph.compile(store=store, checkpointer=InMemorySaver())


def converse(agent: CompiledStateGraph, user: str, thread: str, message: str) -> list[str]:
    """Send one message; print the exchange and return the memories the agent recalled."""
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    state = agent.invoke(
        {"messages": [HumanMessage(message)], "recalled": []},
        config,
        context=UserContext(user_id=user),
    )
    print(f"[{thread}] {user}: {message}")
    for memory in state["recalled"]:
        print(f"    recalled: {memory}")
    print(f"[{thread}] agent: {state['messages'][-1].content}")
    print(f"    ({len(state['messages'])} messages in thread {thread})")
    return list(state["recalled"])


def main(argv: Sequence[str] = ()) -> list[str]:
    """Teach the agent two facts in one conversation, then ask in a new one (on a new
    store object over the same backend, as a second process would). Returns what the
    second conversation recalled."""
    url = argv[0] if argv else "memory://"
    index = {"dims": DIMENSIONS, "embed": WordHashEmbeddings(), "fields": ["text"]}
    question = "what is my favourite colour?"
    with MemkvStore(open_store(url), index=index) as memories:
        teacher = build_agent(memories, ["Noted.", "Noted."])
        converse(teacher, "ada", "monday", "remember my favourite colour is green")
        converse(teacher, "ada", "monday", "remember I live in Lisbon")
        if url.startswith("memory:"):  # in-process: the memories live in this store
            agent = build_agent(memories, ["Green, as you told me."])
            return converse(agent, "ada", "friday", question)
    # On Redis a new store object (as in another process) reads what the first wrote.
    with MemkvStore(open_store(url), index=index) as memories:
        agent = build_agent(memories, ["Green, as you told me."])
        return converse(agent, "ada", "friday", question)


if __name__ == "__main__":
    main(sys.argv[1:])
