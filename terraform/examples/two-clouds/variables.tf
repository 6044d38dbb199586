variable "aws_vpc_id" {
  type        = string
  description = "The AWS VPC of site aws-east."
}

variable "aws_vpc_cidr" {
  type        = string
  description = "The AWS VPC's CIDR (the site)."
}

variable "aws_private_subnet_ids" {
  type        = list(string)
  description = "Three private subnets in three zones for aws-east's servers and gateways."
}

variable "aws_public_subnet_ids" {
  type        = list(string)
  description = "Public subnets for aws-east's gateway load balancer."
}

variable "aws_image_id" {
  type        = string
  description = "An AMI with strait, the AWS CLI and jq."
}

variable "gcp_project" {
  type        = string
  description = "The Google Cloud project of site gcp-west."
}

variable "gcp_network" {
  type        = string
  description = "The VPC network (self link) of gcp-west."
}

variable "gcp_subnetwork" {
  type        = string
  description = "The subnetwork (self link) in us-west1."
}

variable "gcp_subnet_cidr" {
  type        = string
  description = "The subnetwork's CIDR (the site)."
}

variable "gcp_image" {
  type        = string
  description = "An image with strait, gcloud and jq."
}
