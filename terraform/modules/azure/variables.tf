variable "site" {
  type        = string
  description = "The site's name, a DNS label (e.g. azure-eu). Names the trust domain <site>.strait and tags every resource."
  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.site))
    error_message = "site must be a DNS label: lowercase letters, digits and hyphens, at most 63 characters."
  }
}

variable "resource_group_name" {
  type        = string
  description = "The existing resource group the site is deployed into."
}

variable "location" {
  type        = string
  description = "The Azure region (e.g. westeurope)."
}

variable "zones" {
  type        = list(string)
  description = "Availability zones, at least 3: server i runs in zone i modulo their number."
  default     = ["1", "2", "3"]
  validation {
    condition     = length(var.zones) >= 3
    error_message = "give at least 3 zones, so that a zone's loss leaves a quorum."
  }
}

variable "virtual_network_id" {
  type        = string
  description = "The existing virtual network (ID): the mesh domain's forwarding ruleset is linked to it."
}

variable "subnet_id" {
  type        = string
  description = "The existing subnet (ID) for servers, gateways and the internal load balancer."
}

variable "resolver_inbound_subnet_id" {
  type        = string
  description = "An empty subnet (ID), delegated to Microsoft.Network/dnsResolvers, for the DNS resolver's inbound endpoint."
}

variable "resolver_outbound_subnet_id" {
  type        = string
  description = "An empty subnet (ID), delegated to Microsoft.Network/dnsResolvers, for the DNS resolver's outbound endpoint."
}

variable "api_private_ip" {
  type        = string
  description = "The fixed private IP of the internal load balancer in subnet_id: the site's API and DNS address."
}

variable "image_id" {
  type        = string
  description = "A managed image or gallery image version (ID) with /usr/local/bin/strait, the Azure CLI and jq installed."
}

variable "admin_username" {
  type        = string
  description = "The VMs' admin user."
  default     = "strait"
}

variable "admin_ssh_public_key" {
  type        = string
  description = "The admin user's SSH public key."
}

variable "server_count" {
  type        = number
  description = "Servers in the site's Raft group: 3 or 5."
  default     = 3
  validation {
    condition     = contains([3, 5], var.server_count)
    error_message = "server_count must be 3 or 5."
  }
}

variable "gateway_count" {
  type        = number
  description = "Gateways behind the public load balancer (at least 2)."
  default     = 2
  validation {
    condition     = var.gateway_count >= 2
    error_message = "run at least 2 gateways: they fail over between each other."
  }
}

variable "server_vm_size" {
  type        = string
  description = "VM size of servers."
  default     = "Standard_D2s_v5"
}

variable "gateway_vm_size" {
  type        = string
  description = "VM size of gateways (network-bound: accelerated networking helps)."
  default     = "Standard_F4s_v2"
}

variable "data_disk_size" {
  type        = number
  description = "Size in GB of each server's persistent data disk (Raft log, snapshots, identity, KEK)."
  default     = 64
}

variable "site_cidrs" {
  type        = list(string)
  description = "CIDRs inside the site allowed to reach the servers' API and DNS ports."
}

variable "peer_gateway_cidrs" {
  type        = list(string)
  description = "CIDRs of other sites' gateways: the only traffic from outside the site, and only to the gateway port."
  default     = []
}

variable "api_port" {
  type        = number
  description = "The servers' port for Raft and the API (mTLS)."
  default     = 7400
}

variable "bundle_port" {
  type        = number
  description = "The servers' SPIFFE bundle endpoint port (HTTPS)."
  default     = 7401
}

variable "gateway_port" {
  type        = number
  description = "The gateways' port, the only one open between sites."
  default     = 8443
}

variable "mesh_domain" {
  type        = string
  description = "The mesh DNS domain, forwarded to the servers by a DNS resolver forwarding rule."
  default     = "mesh"
}

variable "virtual_ip_cidr" {
  type        = string
  description = "Where virtual IPs of imported services come from; route it to the gateways inside the site."
  default     = "240.0.0.0/16"
}

variable "dns_upstreams" {
  type        = list(string)
  description = "Resolvers (ip:port) for names outside the mesh domain; Azure's resolver by default."
  default     = ["168.63.129.16:53"]
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
