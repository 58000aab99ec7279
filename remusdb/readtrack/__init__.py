"""RT: dirty pages that equal unchanged disk blocks are sent as references."""
