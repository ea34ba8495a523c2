//! Client of the node agent.
